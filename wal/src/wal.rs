//! The log's public face: open (with recovery), append, read, close.
//!
//! A `Wal` lives on one glommio executor: `open` spawns its flusher task there, and every
//! method must be called from that executor. It is not `Clone`; owners share it with `Rc`.
//! Dropping it closes the queue and lets the flusher finish what was queued; nothing that was
//! acknowledged depends on the drop. Methods that only tests call (a point read by sequence
//! number, `next_seq`, `index_footprint`) exist with the `testing` feature, not in release.

use std::cell::RefCell;
use std::rc::Rc;

use crate::commit::{Appended, PiecePos, Queue, Ticket};
use crate::config::{Durability, WalConfig};
use crate::defect::FrameDefect;
use crate::disk::{Disk, DiskFile};
use crate::error::{Error, Result};
use crate::layout::{BLOCK_BYTES, RECORD_PREFIX_BYTES};
use crate::piece::decode_piece_into;
use crate::reader::LogReader;
use crate::recent::RecentFrames;
use crate::record::records;
use crate::recovery::{self, FramePos, RecoveryReport};
use crate::recycle;
use crate::state::{SegmentInfo, Shared, WalStats};
use crate::writer::Writer;

/// A segmented, checksummed, group-committed write-ahead log.
pub struct Wal<D: Disk> {
    shared: Rc<Shared<D>>,
    flusher: Option<glommio::task::JoinHandle<()>>,
}

/// A log verified and replayed but not yet started: nothing on disk has changed.
pub struct RecoveredWal<D: Disk> {
    disk: D,
    config: WalConfig,
    recovered: recovery::Recovered<D::File>,
}

impl<D: Disk> RecoveredWal<D> {
    /// Makes the repairs recovery found and starts the log (its flusher, and the preparation
    /// of the next segment).
    pub async fn start(self) -> Result<Wal<D>> {
        let RecoveredWal { disk, config, recovered } = self;
        recovery::repair(&disk, &config, &recovered).await?;
        // The tail recovery read may have been written and never synced (a process killed
        // between a write and its fdatasync leaves it readable): it is made durable before the
        // log counts it as synced, serves it, or writes after it a frame whose `synced_seq`
        // vouches for it.
        if let Some(tail) = recovered.segments.values().next_back() {
            let path = || disk.path_of(&tail.name);
            tail.file.fdatasync().await.map_err(|e| crate::error::Error::io("fdatasync", path(), e))?;
        }
        let segments = &recovered.segments;
        let free = recycle::adopt(&disk, &config, recovered.free, |base| segments.contains_key(&base)).await?;
        // The directory recovery read may not be durable either: a process that died between a
        // change to it and its sync (a roll, a removal, a recycling rename, an earlier open's
        // repair) leaves names a power loss would undo. Made durable before anything is
        // written under them.
        disk.sync_dir().await.map_err(|e| crate::error::Error::io("sync directory", disk.path_of(""), e))?;
        let report = recovered.report;
        let queue = Queue::new(report.next_seq, config.pending_bytes_max, config.pending_records_max);
        let config_recent_bytes = config.recent_frames_bytes;
        let shared = Rc::new(Shared {
            disk,
            config,
            segments: recovered.segments.into(),
            queue: queue.into(),
            visible_end: report.next_seq.into(),
            first_seq: report.first_seq.into(),
            synced_end: report.next_seq.into(),
            stats: Default::default(),
            end_waiters: Default::default(),
            waits_stopped: Default::default(),
            recent: RefCell::new(RecentFrames::new(config_recent_bytes)),
            free: Rc::new(RefCell::new(free)),
        });
        let writer = Writer::new(shared.clone(), recovered.last_checksum);
        let flusher = glommio::spawn_local(writer.run()).detach();
        Ok(Wal { shared, flusher: Some(flusher) })
    }
}

impl<D: Disk> Wal<D> {
    /// Opens (or creates, if `disk` holds no segments) the log, verifying every frame and
    /// handing every record to `replay` in sequence order before returning. A torn tail is cut;
    /// corruption anywhere else fails the open and changes nothing.
    ///
    /// Must be called on a glommio executor, which then runs the log's flusher.
    pub async fn open(
        disk: D,
        config: WalConfig,
        mut replay: impl FnMut(u64, &[u8]),
    ) -> Result<(Self, RecoveryReport)> {
        Self::open_with_positions(disk, config, |at, record| replay(at.seq, record)).await
    }

    /// Like [`Wal::open`], handing `replay` each record's piece position as well, for owners
    /// that keep where a record lies.
    pub async fn open_with_positions(
        disk: D,
        config: WalConfig,
        replay: impl FnMut(Appended, &[u8]),
    ) -> Result<(Self, RecoveryReport)> {
        let (recovered, report) = Self::recover_with_positions(disk, config, replay).await?;
        Ok((recovered.start().await?, report))
    }

    /// The first half of [`open_with_positions`](Self::open_with_positions): verifies the log
    /// and replays it, changing nothing on disk. The repairs it finds (a torn tail to cut, a
    /// torn segment creation or a leftover preparation to remove) are made by
    /// [`RecoveredWal::start`]; dropping the `RecoveredWal` instead leaves the files as they were.
    pub async fn recover_with_positions(
        disk: D,
        config: WalConfig,
        replay: impl FnMut(Appended, &[u8]),
    ) -> Result<(RecoveredWal<D>, RecoveryReport)> {
        Self::recover_from(disk, config, 0, replay).await
    }

    /// [`recover_with_positions`](Self::recover_with_positions) for an owner that holds the
    /// effect of every record below `from_seq` already (a checkpoint): only records from
    /// `from_seq` on are handed to `replay`, and sealed segments wholly below it are not read
    /// (their headers are checked). The report's `first_seq` and `next_seq` tell the owner
    /// whether the log still reaches back to `from_seq` and forward to it.
    pub async fn recover_from(
        disk: D,
        config: WalConfig,
        from_seq: u64,
        replay: impl FnMut(Appended, &[u8]),
    ) -> Result<(RecoveredWal<D>, RecoveryReport)> {
        Self::recover_from_frame(disk, config, (from_seq, None), replay).await
    }

    /// [`recover_from`](Self::recover_from), reading the segment that holds `from_seq` from
    /// `from_frame` on (a position [`frame_pos`](Self::frame_pos) gave for a record below
    /// `from_seq`) instead of from its first frame. The frames before it are not read, so not
    /// checked; a position that names no valid frame is passed over for a full scan.
    pub async fn recover_from_frame(
        disk: D,
        config: WalConfig,
        from: (u64, Option<FramePos>),
        mut replay: impl FnMut(Appended, &[u8]),
    ) -> Result<(RecoveredWal<D>, RecoveryReport)> {
        config.validate()?;
        let recovered = recovery::recover(&disk, &config, from, &mut replay).await?;
        let report = recovered.report.clone();
        Ok((RecoveredWal { disk, config, recovered }, report))
    }

    /// Queues a record for the next flush without waiting for room: `Backpressure` if the queue
    /// is full. The returned ticket resolves once the record is acknowledged.
    pub fn enqueue(&self, record: &[u8]) -> Result<Ticket> {
        self.check_len(record)?;
        self.shared.queue.borrow_mut().enqueue(record)
    }

    /// Appends a record, waiting for room in the queue if it is full, and resolves once the
    /// record is acknowledged (per the configured `Durability`).
    pub async fn append(&self, record: &[u8]) -> Result<Appended> {
        self.check_len(record)?;
        let framed_len = record.len() + RECORD_PREFIX_BYTES;
        std::future::poll_fn(|cx| self.shared.queue.borrow_mut().poll_room(framed_len, cx)).await;
        let ticket = self.shared.queue.borrow_mut().enqueue(record)?;
        ticket.await
    }

    fn check_len(&self, record: &[u8]) -> Result<()> {
        let max = self.shared.config.record_bytes_max as usize;
        if record.len() > max {
            return Err(Error::RecordTooLarge { len: record.len(), max });
        }
        Ok(())
    }

    /// A reader of acknowledged records from `from_seq` on (`from_seq` may equal the visible
    /// end, to wait for new records).
    pub fn reader(&self, from_seq: u64) -> Result<LogReader<D>> {
        LogReader::new(self.shared.clone(), from_seq, self.shared.config.read_chunk_bytes)
    }

    /// The acknowledged record `seq`, found through the sparse index. For tests: owners read
    /// through the piece positions they keep ([`read_at`](Self::read_at)).
    #[cfg(any(test, feature = "testing"))]
    pub async fn read(&self, seq: u64) -> Result<Vec<u8>> {
        let mut reader = self.point_reader(seq)?;
        self.first_record(&mut reader, seq).await
    }

    /// The acknowledged record `seq`, read straight from the piece an append (or replay)
    /// reported: one read of the piece's blocks, one piece checked and decompressed.
    pub async fn read_at(&self, seq: u64, piece: PiecePos) -> Result<Vec<u8>> {
        let (first, end) = (self.shared.first_seq.get(), self.shared.visible_end.get());
        let out_of_range = Error::OutOfRange { seq, first, end };
        if seq < first || seq >= end {
            return Err(out_of_range);
        }
        if let Some(record) = self.recent_record(seq) {
            return Ok(record);
        }
        let segment = self.shared.segments.borrow().get(&piece.segment_base).cloned();
        let segment = segment.ok_or(out_of_range)?;
        let path = || self.shared.disk.path_of(&segment.name);
        let corrupt = |reason| Error::Corruption { path: path(), offset: piece.offset(), reason };
        let (offset, len) = piece.blocks();
        self.shared.count(|s| s.point_device_reads += 1);
        let buf = segment.file.read_at(offset, len).await.map_err(|e| Error::io("read", path(), e))?;
        let bytes = buf.get(piece.start_in_blocks()..).ok_or_else(|| corrupt(FrameDefect::Short.reason()))?;
        let mut raw = Vec::new();
        let header = decode_piece_into(bytes, self.shared.config.frame_payload_bytes_max, &mut raw)
            .map_err(|defect| corrupt(defect.reason()))?;
        if seq < header.first_seq || seq >= header.end_seq() {
            return Err(corrupt("piece does not hold the record sought"));
        }
        let record = records(&raw).nth((seq - header.first_seq) as usize).expect("records checked");
        let start = record.as_ptr() as usize - raw.as_ptr() as usize;
        let len = record.len();
        raw.copy_within(start..start + len, 0);
        raw.truncate(len);
        Ok(raw)
    }

    /// The record `seq` from the recent frames in memory, if they hold it.
    fn recent_record(&self, seq: u64) -> Option<Vec<u8>> {
        let recent = self.shared.recent.borrow();
        let (first_seq, _, raw) = recent.find(seq)?;
        let record = records(raw).nth((seq - first_seq) as usize).expect("a kept frame holds its records");
        self.shared.count(|s| s.memory_reads += 1);
        Some(record.to_vec())
    }

    #[cfg(any(test, feature = "testing"))]
    fn point_reader(&self, seq: u64) -> Result<LogReader<D>> {
        let (first, end) = (self.shared.first_seq.get(), self.shared.visible_end.get());
        if seq >= end {
            return Err(Error::OutOfRange { seq, first, end });
        }
        LogReader::new(self.shared.clone(), seq, crate::layout::BLOCK_BYTES as usize)
    }

    #[cfg(any(test, feature = "testing"))]
    async fn first_record(&self, reader: &mut LogReader<D>, seq: u64) -> Result<Vec<u8>> {
        match reader.next().await? {
            Some((found, record)) if found == seq => Ok(record.to_vec()),
            _ => Err(Error::OutOfRange { seq, first: self.shared.first_seq.get(), end: self.shared.visible_end.get() }),
        }
    }

    /// Records below this are acknowledged and readable.
    pub fn durable_end(&self) -> u64 {
        self.shared.visible_end.get()
    }

    /// Resolves once the durable end is above `seq` (at once if it is), or the log is closed
    /// or failed, or [`stop_waits`](Self::stop_waits) was called: the wait of a long poll.
    /// Callers bound it with their own timer.
    pub async fn wait_beyond(&self, seq: u64) {
        std::future::poll_fn(|cx| {
            let queue = self.shared.queue.borrow();
            let over = queue.failure().is_some() || queue.is_closing() || self.shared.waits_stopped.get();
            if self.shared.visible_end.get() > seq || over {
                return std::task::Poll::Ready(());
            }
            self.shared.end_waiters.borrow_mut().push(cx.waker().clone());
            std::task::Poll::Pending
        })
        .await
    }

    /// Ends every `wait_beyond` now and from now on (the owner is shutting down).
    pub fn stop_waits(&self) {
        self.shared.waits_stopped.set(true);
        for waker in self.shared.end_waiters.take() {
            waker.wake();
        }
    }

    /// The first record still in the log.
    pub fn first_seq(&self) -> u64 {
        self.shared.first_seq.get()
    }

    /// Records below this are durable on the device: the durable end under
    /// `Durability::Sync`, the end of the last fdatasync under `Buffered`.
    pub fn synced_end(&self) -> u64 {
        match self.shared.config.durability {
            Durability::Sync => self.shared.visible_end.get(),
            Durability::Buffered { .. } => self.shared.synced_end.get().min(self.shared.visible_end.get()),
        }
    }

    /// The position of a frame at or before the one holding durable record `seq`, from the
    /// segments' sparse index (within `index_interval_bytes` of it where the segment is
    /// indexed that far), for an owner's checkpoint
    /// ([`recover_from_frame`](Self::recover_from_frame)); `None` when that is its segment's
    /// first frame, or `seq` is not in the log or not yet durable.
    pub fn frame_pos(&self, seq: u64) -> Option<FramePos> {
        if seq >= self.synced_end() {
            return None;
        }
        let segments = self.shared.segments.borrow();
        let (_, segment) = segments.range(..=seq).next_back()?;
        let (first_seq, offset) = segment.indexed_frame(seq);
        (offset > BLOCK_BYTES).then_some(FramePos { segment_base: segment.base_seq, offset, first_seq })
    }

    /// The segments, oldest first.
    pub fn segments(&self) -> Vec<SegmentInfo> {
        let segments = self.shared.segments.borrow();
        let mut infos: Vec<SegmentInfo> = segments
            .values()
            .map(|s| SegmentInfo {
                base_seq: s.base_seq,
                end_seq: s.end_seq.get(),
                created_ms: s.created_ms,
                last_write_ms: None,
                bytes: self.shared.config.segment_bytes,
            })
            .collect();
        for i in 1..infos.len() {
            infos[i - 1].last_write_ms = Some(infos[i].created_ms);
        }
        infos
    }

    /// Removes the sealed segments that hold only records below `keep_from` (never the tail
    /// segment), oldest first, each removal durable before the next, so that a crash leaves
    /// the log a contiguous run of segments. A removed segment that no reader holds is kept
    /// as a free file for a later roll while there is room (`recycle.rs`). Readers asking for
    /// a removed record get `OutOfRange` naming the new first record; a reader already inside
    /// a removed segment finishes reading it (its file stays open). Returns how many segments
    /// went.
    pub async fn remove_segments_below(&self, keep_from: u64) -> Result<usize> {
        let mut removed = 0;
        loop {
            let victim = {
                let segments = self.shared.segments.borrow();
                let mut iter = segments.values();
                match (iter.next(), iter.next()) {
                    (Some(first), Some(next)) if next.base_seq <= keep_from => Some((first.clone(), next.base_seq)),
                    _ => None,
                }
            };
            let Some((segment, next_base)) = victim else { return Ok(removed) };
            self.shared.segments.borrow_mut().remove(&segment.base_seq);
            self.shared.first_seq.set(next_base);
            recycle::free_or_remove(&self.shared, segment).await?;
            removed += 1;
            self.shared.count(|s| s.segments_removed += 1);
        }
    }

    /// The sequence number the next enqueued record gets (for tests).
    #[cfg(any(test, feature = "testing"))]
    pub fn next_seq(&self) -> u64 {
        self.shared.queue.borrow().next_seq()
    }

    /// Counters since open.
    pub fn stats(&self) -> WalStats {
        WalStats {
            recent_frame_bytes: self.shared.recent.borrow().bytes() as u64,
            free_segments: self.shared.free.borrow().len() as u64,
            ..self.shared.stats.get()
        }
    }

    /// The disk the log lives on (its directory), for owners that keep files beside it.
    pub fn disk(&self) -> &D {
        &self.shared.disk
    }

    /// The configuration the log was opened with.
    pub fn config(&self) -> &WalConfig {
        &self.shared.config
    }

    /// Segments in the log and entries in their sparse indexes (for tests of memory use).
    #[cfg(any(test, feature = "testing"))]
    pub fn index_footprint(&self) -> (usize, usize) {
        let segments = self.shared.segments.borrow();
        (segments.len(), segments.values().map(|s| s.index_len()).sum())
    }

    /// Stops accepting records, flushes and syncs what was queued, and waits for the flusher.
    /// Fails with `Poisoned` if any write or sync failed while the log was open.
    pub async fn close(mut self) -> Result<()> {
        self.shared.queue.borrow_mut().close();
        if let Some(flusher) = self.flusher.take() {
            flusher.await;
        }
        match self.shared.queue.borrow().failure() {
            Some(cause) => Err(Error::Poisoned { cause: cause.into() }),
            None => Ok(()),
        }
    }
}

impl<D: Disk> Drop for Wal<D> {
    fn drop(&mut self) {
        self.shared.queue.borrow_mut().close();
    }
}
