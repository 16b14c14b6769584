//! Reading frames from a segment file, forwards, in large reads.
//!
//! Recovery, iteration and point reads all decode frames through this one cursor, so there is
//! one place where bytes from disk become records and one set of checks on the way. The
//! cursor keeps the last read's buffer and serves later frames from it until it runs out;
//! reads start on a block boundary and are a whole number of blocks, as direct I/O wants.
//!
//! Each read also starts reads of the chunks after it, in the background: a reader going
//! forwards (a consumer, recovery) then finds its next chunk read or on the way, instead of
//! waiting for one read at a time, which held a cold pass at about a tenth of the device's
//! sequential rate. A frame that begins in one chunk and ends in the next is copied together
//! from the two, so that a chunk read ahead is used whatever frame its first bytes belong to.
//! The executor submits a read only when its tasks wait: a reader that decodes a whole chunk
//! without waiting (recovery, whose replay runs in between) keeps several reads under way, so
//! that the one it waits for next was submitted chunks ago.

use std::collections::VecDeque;
use std::rc::Rc;

use crate::defect::FrameDefect;
use crate::disk::DiskFile;
use crate::frame::{self, FrameHeader};
use crate::layout::{align_up, BLOCK_BYTES, FRAME_HEADER_BYTES};
use crate::piece::PieceSpan;

/// A frame that passed every check, with its raw (decompressed) payload and where its pieces
/// lie in it.
pub(crate) struct FrameView<'a> {
    pub header: FrameHeader,
    pub raw: &'a [u8],
    pub pieces: &'a [PieceSpan],
}

/// The outcome of decoding at an offset: I/O errors apart from bad bytes.
pub(crate) type FrameRead<'a> = std::io::Result<Result<FrameView<'a>, FrameDefect>>;

/// A read started before it is needed: its offset, its length, and the task doing it.
type ReadAhead<B> = (u64, usize, glommio::task::JoinHandle<std::io::Result<B>>);

pub(crate) struct FrameCursor<F: DiskFile> {
    file: Rc<F>,
    /// Bytes of the file that may be read: the file size, or the visible end of the log.
    pub end: u64,
    chunk_bytes: usize,
    payload_bytes_max: u32,
    buf: Option<F::ReadBuf>,
    buf_start: u64,
    /// A frame that began before `buf_start` and ends in `buf`, copied together.
    joined: Vec<u8>,
    joined_start: u64,
    /// The reads of the chunks after the buffer, under way, in order.
    ahead: VecDeque<ReadAhead<F::ReadBuf>>,
    /// How many chunks to keep under way ahead of the buffer.
    ahead_max: usize,
    scratch: Vec<u8>,
    pieces: Vec<PieceSpan>,
}

impl<F: DiskFile> FrameCursor<F> {
    pub(crate) fn new(file: Rc<F>, end: u64, chunk_bytes: usize, payload_bytes_max: u32) -> Self {
        FrameCursor {
            file,
            end,
            chunk_bytes,
            payload_bytes_max,
            buf: None,
            buf_start: 0,
            joined: Vec::new(),
            joined_start: 0,
            ahead: VecDeque::new(),
            ahead_max: 1,
            scratch: Vec::new(),
            pieces: Vec::new(),
        }
    }

    /// Keeps `chunks` reads under way ahead of the buffer (one unless told): for a reader that
    /// reads a whole file forwards without waiting between frames.
    pub(crate) fn reading_ahead(mut self, chunks: usize) -> Self {
        self.ahead_max = chunks.max(1);
        self
    }

    /// Makes `offset .. offset + len` readable (from the buffer, or from the frame joined
    /// across its start); false if the file ends first.
    async fn ensure(&mut self, offset: u64, len: usize) -> std::io::Result<bool> {
        assert_eq!(offset % BLOCK_BYTES, 0, "frames start on a block");
        let wanted_end = offset + len as u64;
        if wanted_end > self.end {
            return Ok(false);
        }
        let buf_end = self.buf_start + self.buf.as_ref().map_or(0, |buf| buf.len() as u64);
        if offset >= self.buf_start && wanted_end <= buf_end {
            return Ok(true);
        }
        if offset >= self.joined_start && wanted_end <= self.joined_start + self.joined.len() as u64 {
            return Ok(true);
        }
        let continues_ahead = matches!(self.ahead.front(), Some(&(start, ahead_len, _))
            if start == buf_end && wanted_end <= start + ahead_len as u64);
        if self.buf.is_some() && offset >= self.buf_start && offset < buf_end && continues_ahead {
            let next = self.take_ahead().await?;
            let head = &self.buf.as_ref().expect("checked")[(offset - self.buf_start) as usize..];
            let tail_len = ((wanted_end - buf_end) as usize).min(next.len());
            self.joined.clear();
            self.joined.extend_from_slice(head);
            self.joined.extend_from_slice(&next[..tail_len]);
            self.joined_start = offset;
            self.buf = Some(next);
            self.buf_start = buf_end;
            self.read_ahead();
            return Ok(self.joined.len() >= len);
        }
        let buf = match self.ahead.front() {
            Some(&(start, ahead_len, _)) if start == offset && ahead_len >= len => self.take_ahead().await?,
            _ => {
                // Not what this read needs (a frame longer than a chunk, a jump): left to finish alone.
                self.ahead.clear();
                let wanted = align_up(len.max(self.chunk_bytes) as u64).min(align_up(self.end - offset));
                self.file.read_at(offset, wanted as usize).await?
            }
        };
        let covered = buf.len() >= len;
        self.buf = Some(buf);
        self.buf_start = offset;
        if covered {
            self.read_ahead();
        }
        Ok(covered)
    }

    /// The first read under way, done.
    async fn take_ahead(&mut self) -> std::io::Result<F::ReadBuf> {
        let (start, len, read) = self.ahead.pop_front().expect("a read under way");
        match read.await {
            Some(result) => result,
            None => self.file.read_at(start, len).await,
        }
    }

    /// Starts the reads of the chunks after the buffer and the reads already under way, up to
    /// `ahead_max` of them.
    fn read_ahead(&mut self) {
        let buf_end = self.buf_start + self.buf.as_ref().map_or(0, |buf| buf.len() as u64);
        let mut next = self.ahead.back().map_or(buf_end, |&(start, len, _)| start + len as u64);
        while self.ahead.len() < self.ahead_max && next < self.end && next.is_multiple_of(BLOCK_BYTES) {
            let ahead_len = align_up(self.chunk_bytes as u64).min(align_up(self.end - next)) as usize;
            let file = self.file.clone();
            let read = glommio::spawn_local(async move { file.read_at(next, ahead_len).await }).detach();
            self.ahead.push_back((next, ahead_len, read));
            next += ahead_len as u64;
        }
    }

    /// The bytes at `offset .. offset + len`, after `ensure` made them readable.
    fn bytes(&self, offset: u64, len: usize) -> &[u8] {
        bytes_in(self.buf.as_deref(), self.buf_start, (&self.joined, self.joined_start), offset, len)
    }

    /// Decodes and verifies the frame at `offset` (block aligned).
    pub(crate) async fn frame_at(&mut self, offset: u64) -> FrameRead<'_> {
        self.frame_at_from(offset, 0).await
    }

    /// [`frame_at`](Self::frame_at), but a frame whose records all lie below `records_from`
    /// is verified by its checksum alone: its pieces are not decoded, and the view has no
    /// records and no pieces (an open skipping what a checkpoint holds).
    pub(crate) async fn frame_at_from(&mut self, offset: u64, records_from: u64) -> FrameRead<'_> {
        if !self.ensure(offset, FRAME_HEADER_BYTES).await? {
            return Ok(Err(FrameDefect::Short));
        }
        let header = match FrameHeader::decode(self.bytes(offset, FRAME_HEADER_BYTES), self.payload_bytes_max) {
            Ok(header) => header,
            Err(defect) => return Ok(Err(defect)),
        };
        let frame_len = header.frame_bytes() as usize;
        if !self.ensure(offset, frame_len).await? {
            return Ok(Err(FrameDefect::Short));
        }
        let bytes = bytes_in(self.buf.as_deref(), self.buf_start, (&self.joined, self.joined_start), offset, frame_len);
        let (header_bytes, stored) = bytes.split_at(FRAME_HEADER_BYTES);
        if let Err(defect) = frame::verify(&header, header_bytes, stored) {
            return Ok(Err(defect));
        }
        if header.end_seq() <= records_from {
            self.pieces.clear();
            return Ok(Ok(FrameView { header, raw: &[], pieces: &self.pieces }));
        }
        let raw = match frame::raw_payload(&header, stored, &mut self.scratch, &mut self.pieces) {
            Ok(raw) => raw,
            Err(defect) => return Ok(Err(defect)),
        };
        Ok(Ok(FrameView { header, raw, pieces: &self.pieces }))
    }
}

/// The bytes at `offset .. offset + len` from the buffer read at `buf_start`, or else from the
/// frame joined at `joined_start` (a free function: the caller holds other fields mutably).
fn bytes_in<'a>(
    buf: Option<&'a [u8]>,
    buf_start: u64,
    (joined, joined_start): (&'a [u8], u64),
    offset: u64,
    len: usize,
) -> &'a [u8] {
    let buf = buf.unwrap_or_default();
    let (from, start) = if offset >= buf_start && offset + len as u64 <= buf_start + buf.len() as u64 {
        (buf, offset - buf_start)
    } else {
        (joined, offset - joined_start)
    };
    &from[start as usize..start as usize + len]
}

/// Offset of the frame after the one at `offset` with header `header`.
pub(crate) fn next_frame_offset(offset: u64, header: &FrameHeader) -> u64 {
    offset + align_up(header.frame_bytes())
}
