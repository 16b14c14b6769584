//! Group commit: the queue of records waiting for the next flush and the tickets that
//! resolve when their flush is durable.
//!
//! Appenders copy their record into the open batch and get a [`Ticket`] that holds its
//! sequence number and a shared [`Completion`] of that batch: one allocation per batch, not
//! per record. The flusher takes the whole open batch at once (so while one flush is on the
//! disk, the next batch gathers everything that arrives), and completes it once, waking every
//! ticket. Seq numbers are handed out here, in queue order, so the log order is the order in
//! which `enqueue` was called.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use crate::error::{Error, Result};
use crate::layout::{BLOCK_BYTES, RECORD_PREFIX_BYTES};
use crate::record::push_record;

/// Where the piece holding a record lies: enough to read the record back with one read of a
/// few blocks and no index lookup. Sixteen bytes (owners keep one per record they index): the
/// blocks covering the piece (32 bits of block number: segments are at most 1 TiB; 16 bits of
/// length: a piece is at most a frame, 64 MiB) and where in the first block the piece begins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PiecePos {
    /// Base sequence number (and so the name) of the segment holding the piece.
    pub segment_base: u64,
    block: u32,
    in_block: u16,
    blocks: u16,
}

impl PiecePos {
    /// The piece at byte `offset` of segment `segment_base`, `len` bytes long (header included).
    pub(crate) fn new(segment_base: u64, offset: u64, len: u64) -> PiecePos {
        let block = u32::try_from(offset / BLOCK_BYTES).expect("segments are at most 1 TiB");
        let in_block = (offset % BLOCK_BYTES) as u16;
        let blocks = (offset % BLOCK_BYTES + len).div_ceil(BLOCK_BYTES);
        let blocks = u16::try_from(blocks).expect("pieces are at most 64 MiB");
        PiecePos { segment_base, block, in_block, blocks }
    }

    /// Byte offset of the piece within its segment.
    pub fn offset(&self) -> u64 {
        u64::from(self.block) * BLOCK_BYTES + u64::from(self.in_block)
    }

    /// The whole blocks to read for the piece: their offset within the segment and length.
    pub fn blocks(&self) -> (u64, usize) {
        (u64::from(self.block) * BLOCK_BYTES, usize::from(self.blocks) * BLOCK_BYTES as usize)
    }

    /// Where the piece begins within those blocks.
    pub fn start_in_blocks(&self) -> usize {
        usize::from(self.in_block)
    }
}

/// An acknowledged record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// The record's sequence number.
    pub seq: u64,
    /// The piece that holds it.
    pub piece: PiecePos,
}

/// The pieces one flush wrote: first sequence number of each, in order, and where it lies.
pub(crate) type FlushedPieces = Rc<[(u64, PiecePos)]>;

#[derive(Default)]
struct CompletionState {
    outcome: Option<Result<FlushedPieces>>,
    wakers: Vec<Waker>,
}

/// The outcome of one batch, shared by all its tickets.
#[derive(Default)]
pub(crate) struct Completion {
    state: RefCell<CompletionState>,
}

impl Completion {
    /// Records the outcome and wakes every ticket of the batch. Called exactly once.
    pub(crate) fn complete(&self, outcome: Result<FlushedPieces>) {
        let wakers = {
            let mut state = self.state.borrow_mut();
            assert!(state.outcome.is_none(), "a batch completes once");
            state.outcome = Some(outcome);
            std::mem::take(&mut state.wakers)
        };
        for waker in wakers {
            waker.wake();
        }
    }
}

/// A future that resolves once the record's batch is durable (per the log's `Durability`),
/// or failed. Dropping it does not withdraw the record.
#[must_use = "a ticket does nothing unless awaited, and the record is appended regardless"]
pub struct Ticket {
    seq: u64,
    completion: Rc<Completion>,
    waker_slot: Option<usize>,
}

impl Ticket {
    /// The sequence number the record will have once durable.
    pub fn seq(&self) -> u64 {
        self.seq
    }
}

impl Future for Ticket {
    type Output = Result<Appended>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let completion = self.completion.clone();
        let mut state = completion.state.borrow_mut();
        match &state.outcome {
            Some(Ok(pieces)) => {
                let index = pieces.partition_point(|(first, _)| *first <= self.seq);
                assert!(index > 0, "a completed batch holds every one of its tickets");
                Poll::Ready(Ok(Appended { seq: self.seq, piece: pieces[index - 1].1 }))
            }
            Some(Err(error)) => Poll::Ready(Err(error.clone())),
            None => {
                match self.waker_slot {
                    Some(slot) if state.wakers[slot].will_wake(cx.waker()) => {}
                    Some(slot) => state.wakers[slot] = cx.waker().clone(),
                    None => {
                        state.wakers.push(cx.waker().clone());
                        self.waker_slot = Some(state.wakers.len() - 1);
                    }
                }
                Poll::Pending
            }
        }
    }
}

/// Records taken by the flusher in one go.
pub(crate) struct Batch {
    /// Length-prefixed records, in sequence order.
    pub raw: Vec<u8>,
    pub count: usize,
    pub first_seq: u64,
    pub completion: Rc<Completion>,
}

impl Batch {
    pub(crate) fn end_seq(&self) -> u64 {
        self.first_seq + self.count as u64
    }
}

/// What the flusher should do next.
pub(crate) enum Work {
    Flush(Batch),
    Exit,
}

/// The open batch and everyone waiting on the queue.
pub(crate) struct Queue {
    raw: Vec<u8>,
    count: usize,
    next_seq: u64,
    completion: Rc<Completion>,
    spare: Vec<u8>,
    failed: Option<Error>,
    closing: bool,
    flusher: Option<Waker>,
    space_waiters: Vec<Waker>,
    bytes_max: usize,
    records_max: usize,
}

impl Queue {
    pub(crate) fn new(next_seq: u64, bytes_max: usize, records_max: usize) -> Self {
        Queue {
            raw: Vec::new(),
            count: 0,
            next_seq,
            completion: Rc::default(),
            spare: Vec::new(),
            failed: None,
            closing: false,
            flusher: None,
            space_waiters: Vec::new(),
            bytes_max,
            records_max,
        }
    }

    fn refusal(&self) -> Option<Error> {
        if let Some(cause) = &self.failed {
            return Some(Error::Poisoned { cause: Arc::new(cause.clone()) });
        }
        self.closing.then_some(Error::Closed)
    }

    fn has_room(&self, framed_len: usize) -> bool {
        self.count == 0 || (self.count < self.records_max && self.raw.len() + framed_len <= self.bytes_max)
    }

    /// Adds a record to the open batch, or says why not (`Backpressure` when full).
    pub(crate) fn enqueue(&mut self, record: &[u8]) -> Result<Ticket> {
        if let Some(refusal) = self.refusal() {
            return Err(refusal);
        }
        let framed_len = record.len() + RECORD_PREFIX_BYTES;
        if !self.has_room(framed_len) {
            return Err(Error::Backpressure { records: self.count, bytes: self.raw.len() });
        }
        push_record(&mut self.raw, record);
        self.count += 1;
        let seq = self.next_seq;
        self.next_seq += 1;
        if let Some(flusher) = self.flusher.take() {
            flusher.wake();
        }
        Ok(Ticket { seq, completion: self.completion.clone(), waker_slot: None })
    }

    /// Ready when a record of `framed_len` bytes would be accepted (or refused for good).
    pub(crate) fn poll_room(&mut self, framed_len: usize, cx: &mut Context<'_>) -> Poll<()> {
        if self.refusal().is_some() || self.has_room(framed_len) {
            return Poll::Ready(());
        }
        self.space_waiters.push(cx.waker().clone());
        Poll::Pending
    }

    /// The flusher's wait: the open batch as soon as it holds a record, or `Exit` on close.
    pub(crate) fn poll_work(&mut self, cx: &mut Context<'_>) -> Poll<Work> {
        if self.count > 0 {
            let raw = std::mem::replace(&mut self.raw, std::mem::take(&mut self.spare));
            let batch = Batch {
                raw,
                count: self.count,
                first_seq: self.next_seq - self.count as u64,
                completion: std::mem::take(&mut self.completion),
            };
            self.count = 0;
            for waiter in self.space_waiters.drain(..) {
                waiter.wake();
            }
            return Poll::Ready(Work::Flush(batch));
        }
        if self.closing || self.failed.is_some() {
            return Poll::Ready(Work::Exit);
        }
        self.flusher = Some(cx.waker().clone());
        Poll::Pending
    }

    /// Gives a flushed batch's buffer back for reuse.
    pub(crate) fn recycle(&mut self, mut raw: Vec<u8>) {
        raw.clear();
        self.spare = raw;
    }

    /// Stops accepting records; the flusher drains what is queued and exits.
    pub(crate) fn close(&mut self) {
        self.closing = true;
        self.wake_all();
    }

    /// After a failed write or sync: fails the open batch and every later append.
    pub(crate) fn poison(&mut self, cause: Error) {
        if self.failed.is_none() {
            self.failed = Some(cause.clone());
        }
        if self.count > 0 {
            let completion = std::mem::take(&mut self.completion);
            self.raw.clear();
            self.count = 0;
            completion.complete(Err(Error::Poisoned { cause: Arc::new(cause) }));
        }
        self.wake_all();
    }

    fn wake_all(&mut self) {
        if let Some(flusher) = self.flusher.take() {
            flusher.wake();
        }
        for waiter in self.space_waiters.drain(..) {
            waiter.wake();
        }
    }

    /// True once the log was closed.
    pub(crate) fn is_closing(&self) -> bool {
        self.closing
    }

    /// The failure that poisoned the queue, if any.
    pub(crate) fn failure(&self) -> Option<Error> {
        self.failed.clone()
    }

    /// The next sequence number to be handed out.
    #[cfg(any(test, feature = "testing"))]
    pub(crate) fn next_seq(&self) -> u64 {
        self.next_seq
    }
}
