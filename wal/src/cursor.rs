//! Reading frames from a segment file, forwards, in large reads.
//!
//! Recovery, iteration and point reads all decode frames through this one cursor, so there is
//! one place where bytes from disk become records and one set of checks on the way. The
//! cursor keeps the last read's buffer and serves later frames from it until it runs out;
//! reads start on a block boundary and are a whole number of blocks, as direct I/O wants.
//!
//! Each read also starts the read of the chunk after it, in the background: a reader going
//! forwards (a consumer, recovery) then finds its next chunk read or on the way, instead of
//! waiting for one read at a time, which held a cold pass at about a tenth of the device's
//! sequential rate.

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
    /// The read of the chunk after the buffer, under way.
    ahead: Option<ReadAhead<F::ReadBuf>>,
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
            ahead: None,
            scratch: Vec::new(),
            pieces: Vec::new(),
        }
    }

    /// Makes the buffer cover `offset .. offset + len`; false if the file ends first.
    async fn ensure(&mut self, offset: u64, len: usize) -> std::io::Result<bool> {
        assert_eq!(offset % BLOCK_BYTES, 0, "frames start on a block");
        if offset + len as u64 > self.end {
            return Ok(false);
        }
        if let Some(buf) = &self.buf {
            if offset >= self.buf_start && offset + len as u64 <= self.buf_start + buf.len() as u64 {
                return Ok(true);
            }
        }
        let wanted = align_up(len.max(self.chunk_bytes) as u64).min(align_up(self.end - offset));
        let buf = match self.ahead.take() {
            Some((start, ahead_len, read)) if start == offset && ahead_len >= len => match read.await {
                Some(result) => result?,
                None => self.file.read_at(offset, wanted as usize).await?,
            },
            // Not what this read needs (a frame across chunks, a jump): left to finish alone.
            _ => self.file.read_at(offset, wanted as usize).await?,
        };
        let covered = buf.len() >= len;
        let next = offset + buf.len() as u64;
        self.buf = Some(buf);
        self.buf_start = offset;
        if covered && next < self.end && next.is_multiple_of(BLOCK_BYTES) {
            let ahead_len = align_up(self.chunk_bytes as u64).min(align_up(self.end - next)) as usize;
            let file = self.file.clone();
            let read = glommio::spawn_local(async move { file.read_at(next, ahead_len).await }).detach();
            self.ahead = Some((next, ahead_len, read));
        }
        Ok(covered)
    }

    fn bytes(&self, offset: u64, len: usize) -> &[u8] {
        let buf = self.buf.as_ref().expect("ensure succeeded");
        let start = (offset - self.buf_start) as usize;
        &buf[start..start + len]
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
        let bytes = {
            let buf = self.buf.as_ref().expect("ensure succeeded");
            let start = (offset - self.buf_start) as usize;
            &buf[start..start + frame_len]
        };
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

/// Offset of the frame after the one at `offset` with header `header`.
pub(crate) fn next_frame_offset(offset: u64, header: &FrameHeader) -> u64 {
    offset + align_up(header.frame_bytes())
}
