//! Opening a log: find its segments, verify every frame, cut a torn tail, refuse corruption.
//!
//! The rule that separates a torn tail from corruption: a crash can only damage bytes that were
//! not yet durable, and those are always at the end of the last segment. So every defect in a
//! sealed segment is corruption, and a defect in the last segment is a torn tail only if no
//! valid frame after it proves the damaged bytes had been made durable. Each frame carries
//! `synced_seq` (every record below it was durable when the frame was written), which is that
//! proof: a later frame whose `synced_seq` is above the damaged frame's first record means the
//! damage hit durable data. A torn tail is truncated and the truncation synced; corruption
//! fails the open with the segment and offset, and nothing is changed. A sealed segment ends
//! where the next one begins, and nothing after its last frame is read: a recycled file
//! (`recycle.rs`) holds old frames there, numbered below its first record, which past the
//! last segment's tail count as space never written.
//!
//! Recovery reads only: what it would change (cut a torn tail, remove a torn segment creation
//! or a leftover preparation) it notes as [`Repair`]s, made by [`repair`] when the owner
//! starts the log. An owner of several logs (the engine) recovers them all first and starts
//! none if any is refused, so a refused open changes no log.
//!
//! One ambiguity is inherent to every log and documented in `docs/FORMAT.md`: damage to the
//! very last flush looks exactly like a torn write, so it is truncated.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::rc::Rc;

use crate::commit::{Appended, PiecePos};
use crate::config::WalConfig;
use crate::cursor::{next_frame_offset, FrameCursor};
use crate::defect::FrameDefect;
use crate::disk::{Disk, DiskFile};
use crate::error::{Error, Result};
use crate::layout::{BLOCK_BYTES, FRAME_HEADER_BYTES, SEGMENT_HEADER_BYTES, SEGMENT_VERSION};
use crate::record::records;
use crate::recycle;
use crate::segment::{self, HeaderDefect, SegmentHeader};
use crate::state::SegmentState;

/// Chunks a scan keeps under way ahead of the one it decodes (`cursor.rs`): the replay runs
/// between its reads without waiting, so a read it needs was submitted a few chunks before.
const READS_AHEAD: usize = 4;

/// Chunks the scan past a segment's last frame keeps under way (`scan_rest`): nothing runs
/// between its reads but a look at each block's header, so it waits on the device, which
/// reads faster with more reads in flight.
const SCAN_READS_AHEAD: usize = 16;

/// Where a frame of the log starts: the segment (by its first record), the frame's offset in
/// it and the frame's first record. An owner that keeps the log's effect elsewhere (a
/// checkpoint) keeps the position of a frame at or before its last record, so that recovery
/// starts reading there instead of at the segment's first frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FramePos {
    pub segment_base: u64,
    pub offset: u64,
    pub first_seq: u64,
}

/// What recovery found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Segments opened.
    pub segments: usize,
    /// Frames verified.
    pub frames: u64,
    /// Records verified.
    pub records: u64,
    /// Records handed to the replay callback (those at or after the position replayed from).
    pub replayed: u64,
    /// Sealed segments wholly below the position replayed from: their headers checked, their
    /// frames not read (they were verified when written and by earlier opens).
    pub skipped_segments: usize,
    /// Bytes of the segment replayed from that were not read: they lie below the frame the
    /// owner named ([`FramePos`]), and are in its checkpoint.
    pub unread_bytes: u64,
    /// The first record in the log.
    pub first_seq: u64,
    /// The sequence number the next append gets.
    pub next_seq: u64,
    /// A torn tail, cut when the log starts: the segment and the offset it is cut at.
    pub truncated: Option<(PathBuf, u64)>,
    /// A last segment whose creation was torn (no valid header, no frames), removed when the
    /// log starts.
    pub removed_segment: Option<PathBuf>,
}

impl RecoveryReport {
    /// The file name of the log's first segment (for errors about the log as a whole).
    pub fn first_segment_name(&self) -> String {
        segment::file_name(self.first_seq)
    }
}

/// A change to the log's files that recovery found necessary, made only when the log starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Repair {
    /// Remove the last segment, whose creation was torn.
    RemoveTornSegment { name: String },
    /// Cut the last segment (by base sequence number) at `offset`: a torn tail.
    CutTail { base: u64, offset: u64 },
    /// Remove a segment preparation left by the last run (it is made anew).
    RemovePrepared,
}

pub(crate) struct Recovered<F> {
    pub segments: BTreeMap<u64, Rc<SegmentState<F>>>,
    pub last_checksum: u64,
    pub report: RecoveryReport,
    /// In the order they are to be made.
    pub repairs: Vec<Repair>,
    /// The free files beside the log (`recycle.rs`), adopted when the log starts.
    pub free: Vec<String>,
}

fn corruption<D: Disk>(disk: &D, name: &str, offset: u64, reason: &'static str) -> Error {
    Error::Corruption { path: disk.path_of(name), offset, reason }
}

/// Recovers the log in `disk`, handing every record from `from_seq` on to `replay` in order.
/// Sealed segments wholly below `from_seq` are opened and their headers checked, not scanned:
/// the owner holds their effect elsewhere (a checkpoint), and an open must not cost the whole
/// history. In the segment that holds `from_seq`, reading starts at `from_frame` when that names
/// a valid frame of it at or before `from_seq`, and at the segment's first frame otherwise.
pub(crate) async fn recover<D: Disk>(
    disk: &D,
    config: &WalConfig,
    (from_seq, from_frame): (u64, Option<FramePos>),
    replay: &mut dyn FnMut(Appended, &[u8]),
) -> Result<Recovered<D::File>> {
    // A frame past `from_seq` would skip records to replay; one numbered at or below its
    // segment's base is not one a checkpoint names (the first frame holds the base).
    let start_in =
        |base: u64| from_frame.filter(|at| at.segment_base == base && at.first_seq > base && at.first_seq <= from_seq);
    let names = disk.list().map_err(|e| Error::io("list", disk.path_of(""), e))?;
    let mut bases: Vec<u64> = names.iter().filter_map(|name| segment::parse_file_name(name)).collect();
    bases.sort_unstable();

    let mut recovered: Recovered<D::File> = Recovered {
        segments: BTreeMap::new(),
        last_checksum: 0,
        report: RecoveryReport::default(),
        repairs: Vec::new(),
        free: names.iter().filter(|name| recycle::is_free_name(name)).cloned().collect(),
    };
    let mut expected: Option<u64> = None;
    // The chain seed of a segment after a skipped one cannot be checked: its predecessor's
    // last frame was not read.
    let mut chain_known = true;
    let mut gated = |at: Appended, record: &[u8]| {
        if at.seq >= from_seq {
            replay(at, record);
        }
    };
    for (i, &base) in bases.iter().enumerate() {
        let is_last = i + 1 == bases.len();
        let skipped_end = bases.get(i + 1).copied().filter(|&next| next <= from_seq);
        let name = segment::file_name(base);
        let file = Rc::new(disk.open(&name).await.map_err(|e| Error::io("open", disk.path_of(&name), e))?);
        let size = file.size().await.map_err(|e| Error::io("stat", disk.path_of(&name), e))?;
        let header = match read_header(disk, &name, &file, config).await? {
            Ok(header) => header,
            Err(reason) => {
                let rest = scan_rest(&file, size, BLOCK_BYTES, (0, base), config).await;
                let torn_creation = is_last && rest.is_ok_and(|rest| rest.proof.is_none());
                if !torn_creation {
                    return Err(corruption(disk, &name, 0, reason));
                }
                recovered.report.removed_segment = Some(disk.path_of(&name));
                recovered.repairs.push(Repair::RemoveTornSegment { name });
                if !chain_known {
                    // The segment before it was skipped (wholly below the replay's start, this one
                    // after it). The tail now, it is scanned for where it ends and for its last
                    // frame's checksum, which the next segment's chain seed must be.
                    let tail = recovered.segments.values().next_back().expect("a skipped segment is kept").clone();
                    let path = || disk.path_of(&tail.name);
                    let size = tail.file.size().await.map_err(|e| Error::io("stat", path(), e))?;
                    let header = read_header(disk, &tail.name, &tail.file, config)
                        .await?
                        .map_err(|reason| corruption(disk, &tail.name, 0, reason))?;
                    let segment = Rc::new(SegmentState::new(
                        tail.base_seq,
                        tail.name.clone(),
                        tail.file.clone(),
                        header.created_ms,
                    ));
                    let from = (header.chain_seed, from_seq, start_in(tail.base_seq));
                    let scan =
                        scan_segment(disk, &segment, size, from, None, config, &mut gated, &mut recovered).await?;
                    recovered.last_checksum = scan;
                    recovered.report.skipped_segments -= 1;
                    expected = Some(segment.end_seq.get());
                    recovered.segments.insert(tail.base_seq, segment);
                }
                break;
            }
        };
        if header.base_seq != base {
            return Err(corruption(disk, &name, 0, "segment header disagrees with the file name"));
        }
        match expected {
            Some(next) if next != base => {
                return Err(corruption(disk, &name, 0, "segment does not start where the previous one ends"))
            }
            Some(_) if chain_known && header.chain_seed != recovered.last_checksum => {
                return Err(corruption(
                    disk,
                    &name,
                    0,
                    "segment chain seed differs from the previous segment's last frame",
                ))
            }
            None => recovered.report.first_seq = base,
            Some(_) => {}
        }
        let segment = Rc::new(SegmentState::new(base, name.clone(), file.clone(), header.created_ms));
        if let Some(end_seq) = skipped_end {
            segment.note_unscanned(end_seq, size);
            recovered.report.skipped_segments += 1;
            recovered.report.segments += 1;
            chain_known = false;
            expected = Some(end_seq);
            recovered.segments.insert(base, segment);
            continue;
        }
        let ends_at = bases.get(i + 1).copied();
        let scan = scan_segment(
            disk,
            &segment,
            size,
            (header.chain_seed, from_seq, start_in(base)),
            ends_at,
            config,
            &mut gated,
            &mut recovered,
        )
        .await?;
        chain_known = true;
        recovered.last_checksum = scan;
        recovered.report.segments += 1;
        expected = Some(segment.end_seq.get());
        recovered.segments.insert(base, segment);
    }
    recovered.report.next_seq = expected.unwrap_or(0);
    let first = recovered.report.first_seq;
    recovered.report.replayed = recovered.report.next_seq.saturating_sub(from_seq.max(first));
    if expected.is_none() {
        recovered.report.first_seq = 0;
    }
    // A preparation left by the last run may be half made: it is made anew.
    if names.iter().any(|name| name == segment::PREPARED_NAME) {
        recovered.repairs.push(Repair::RemovePrepared);
    }
    Ok(recovered)
}

/// Makes the repairs recovery noted, in order, each durable before the next.
pub(crate) async fn repair<D: Disk>(disk: &D, config: &WalConfig, recovered: &Recovered<D::File>) -> Result<()> {
    let sync_dir = || async { disk.sync_dir().await.map_err(|e| Error::io("sync directory", disk.path_of(""), e)) };
    for repair in &recovered.repairs {
        match repair {
            Repair::RemoveTornSegment { name } => {
                disk.remove(name).await.map_err(|e| Error::io("remove", disk.path_of(name), e))?;
                sync_dir().await?;
            }
            Repair::CutTail { base, offset } => {
                let segment = recovered.segments.get(base).expect("the cut segment was recovered");
                cut_tail(disk, segment, *offset, config).await?;
            }
            Repair::RemovePrepared => {
                let path = disk.path_of(segment::PREPARED_NAME);
                disk.remove(segment::PREPARED_NAME).await.map_err(|e| Error::io("remove", path, e))?;
                sync_dir().await?;
            }
        }
    }
    Ok(())
}

/// Reads the header block; `Ok(Err(reason))` is a header that is not valid (torn or corrupt).
async fn read_header<D: Disk>(
    disk: &D,
    name: &str,
    file: &D::File,
    config: &WalConfig,
) -> Result<Result<SegmentHeader, &'static str>> {
    let bytes = file.read_at(0, BLOCK_BYTES as usize).await.map_err(|e| Error::io("read", disk.path_of(name), e))?;
    match SegmentHeader::decode(&bytes[..bytes.len().min(SEGMENT_HEADER_BYTES)]) {
        Ok(header) if header.shard_id != config.shard_id => {
            Err(Error::ForeignSegment { path: disk.path_of(name), found: header.shard_id, expected: config.shard_id })
        }
        Ok(header) => Ok(Ok(header)),
        Err(HeaderDefect::Version(found)) => {
            Err(Error::UnsupportedVersion { path: disk.path_of(name), found, supported: SEGMENT_VERSION })
        }
        Err(HeaderDefect::Invalid(reason)) => Ok(Err(reason)),
    }
}

/// Verifies every frame of a segment, replays its records from `replay_from` on and notes them
/// in its index (a frame wholly below `replay_from` is checked by its checksum, its pieces not
/// decoded: a checkpoint holds its effect).
/// Returns the checksum of its last frame (or `chain_seed` if it has none). A sealed segment
/// ends where the next one begins (`ends_at`, that one's first record): what lies after its
/// last frame is not read, for a recycled file holds old frames there (`recycle.rs`). The last
/// segment ends at its first defect, and an old frame (numbered below the segment's first
/// record) counts as space never written.
///
/// With `start`, the scan begins at that frame when it is valid and numbered as named (the
/// frames before it are in the owner's checkpoint; the chain is taken up from the frame's own
/// link), and at the first frame otherwise: a position that names no frame costs a longer
/// scan, never a record.
#[allow(clippy::too_many_arguments)]
async fn scan_segment<D: Disk>(
    disk: &D,
    segment: &SegmentState<D::File>,
    size: u64,
    (chain_seed, replay_from, start): (u64, u64, Option<FramePos>),
    ends_at: Option<u64>,
    config: &WalConfig,
    replay: &mut dyn FnMut(Appended, &[u8]),
    recovered: &mut Recovered<D::File>,
) -> Result<u64> {
    let report = &mut recovered.report;
    let path = || disk.path_of(&segment.name);
    let mut cursor =
        FrameCursor::new(segment.file.clone(), size, config.read_chunk_bytes, config.frame_payload_bytes_max)
            .reading_ahead(READS_AHEAD);
    let mut offset = BLOCK_BYTES;
    let mut prev_checksum = chain_seed;
    if let Some(start) = start.filter(|at| at.offset > BLOCK_BYTES && at.offset.is_multiple_of(BLOCK_BYTES)) {
        let read = cursor.frame_at_from(start.offset, replay_from).await.map_err(|e| Error::io("read", path(), e))?;
        if let Some(frame) = read.ok().filter(|frame| frame.header.first_seq == start.first_seq) {
            prev_checksum = frame.header.prev_checksum;
            segment.start_at_frame(start.first_seq, start.offset);
            report.unread_bytes = start.offset - BLOCK_BYTES;
            offset = start.offset;
        }
    }
    let is_last = ends_at.is_none();
    while offset < size {
        let expected_seq = segment.end_seq.get();
        if ends_at == Some(expected_seq) {
            break;
        }
        let read = cursor.frame_at_from(offset, replay_from).await.map_err(|e| Error::io("read", path(), e))?;
        let defect = match read {
            Ok(frame) if frame.header.first_seq == expected_seq && frame.header.prev_checksum == prev_checksum => {
                let next = next_frame_offset(offset, &frame.header);
                let payload_at = offset + FRAME_HEADER_BYTES as u64;
                // A frame wholly below the replay was checked by its checksum alone.
                let mut seq = match frame.pieces.is_empty() {
                    true => frame.header.end_seq(),
                    false => frame.header.first_seq,
                };
                let mut pieces = frame.pieces.iter().peekable();
                let mut piece = pieces.peek().copied();
                for record in records(frame.raw) {
                    while pieces.peek().is_some_and(|p| p.first_seq <= seq) {
                        piece = pieces.next();
                    }
                    let piece = piece.expect("a decoded frame has a piece");
                    let at = PiecePos::new(segment.base_seq, payload_at + piece.start as u64, piece.len as u64);
                    replay(Appended { seq, piece: at }, record);
                    seq += 1;
                }
                segment.note_frame(expected_seq, seq, offset, next, config.index_interval_bytes);
                report.frames += 1;
                report.records += frame.header.record_count as u64;
                prev_checksum = frame.header.checksum;
                offset = next;
                continue;
            }
            Ok(frame) if is_last && frame.header.first_seq < segment.base_seq => None,
            Ok(_) => Some("frame out of sequence or off the checksum chain"),
            Err(FrameDefect::Unwritten) => None,
            Err(defect) => Some(defect.reason()),
        };
        // A sealed segment holds every record up to the next segment's first: stopping short
        // of it is corruption.
        if !is_last {
            let reason = defect.unwrap_or("unwritten block before the segment's last record");
            return Err(Error::Corruption { path: path(), offset, reason });
        }
        let rest = scan_rest(
            &segment.file,
            size,
            offset + BLOCK_BYTES,
            (expected_seq.saturating_add(1), segment.base_seq),
            config,
        )
        .await
        .map_err(|e| Error::io("read", path(), e))?;
        if rest.proof.is_some() {
            let reason = defect.unwrap_or("unwritten block before a durable frame");
            return Err(Error::Corruption { path: path(), offset, reason });
        }
        if defect.is_some() || rest.dirty {
            report.truncated = Some((path(), offset));
            recovered.repairs.push(Repair::CutTail { base: segment.base_seq, offset });
        }
        break;
    }
    Ok(prev_checksum)
}

/// What lies after the end of a segment's valid frames.
struct Rest {
    /// Offset of a valid frame whose `synced_seq` proves the log was durable past the end.
    proof: Option<u64>,
    /// Some block after the end holds bytes (a torn write), not zeros.
    dirty: bool,
}

/// Looks at every block from `from` on for a valid frame whose `synced_seq` is at least
/// `synced_min` (proof that the log was durable past a damaged spot before it), and for any
/// written block at all; a valid frame numbered below `base` is an old frame of a recycled
/// file (`recycle.rs`), neither proof nor a write of this segment's.
async fn scan_rest<F: DiskFile>(
    file: &Rc<F>,
    size: u64,
    from: u64,
    (synced_min, base): (u64, u64),
    config: &WalConfig,
) -> std::io::Result<Rest> {
    let mut cursor = FrameCursor::new(file.clone(), size, config.read_chunk_bytes, config.frame_payload_bytes_max)
        .reading_ahead(SCAN_READS_AHEAD);
    let mut rest = Rest { proof: None, dirty: false };
    let mut offset = from;
    while offset < size {
        match cursor.frame_at(offset).await? {
            Ok(frame) if frame.header.first_seq < base => offset = next_frame_offset(offset, &frame.header),
            Ok(frame) if frame.header.synced_seq >= synced_min => {
                rest.proof = Some(offset);
                return Ok(rest);
            }
            Ok(frame) => {
                rest.dirty = true;
                offset = next_frame_offset(offset, &frame.header);
            }
            Err(defect) => {
                rest.dirty |= defect != FrameDefect::Unwritten;
                offset += BLOCK_BYTES;
            }
        }
    }
    Ok(rest)
}

/// Cuts the last segment at `offset`: everything after reads as zeros again, durably, with the
/// segment's space still reserved.
async fn cut_tail<D: Disk>(disk: &D, segment: &SegmentState<D::File>, offset: u64, config: &WalConfig) -> Result<()> {
    let path = || disk.path_of(&segment.name);
    segment.file.truncate(offset).await.map_err(|e| Error::io("truncate", path(), e))?;
    segment.file.preallocate(config.segment_bytes).await.map_err(|e| Error::io("fallocate", path(), e))?;
    segment.file.fdatasync().await.map_err(|e| Error::io("fdatasync", path(), e))
}
