//! An executor's inbox: the bounded queue through which any thread hands it requests (the
//! jobs of `ops.rs`; the queue knows nothing of them).
//!
//! Senders push without locks (`crossbeam_queue::ArrayQueue`); the executor drains it in
//! batches, so one wake-up serves every request that arrived meanwhile. When the executor has
//! nothing to do it parks its dispatcher task; a sender that finds it parked wakes it (a
//! glommio cross-thread wake). The `parked` flag and the queue are each written before the
//! other is read, with sequentially consistent ordering on both sides, so no wake-up is lost.
//! A full queue is backpressure: senders may wait for room (woken after each drain) or fail.

use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::Mutex;
use std::task::{Context, Poll, Waker};

use crossbeam_queue::ArrayQueue;

pub(crate) struct Inbox<T> {
    queue: ArrayQueue<T>,
    parked: AtomicBool,
    dispatcher: Mutex<Option<Waker>>,
    space_wanted: AtomicBool,
    space_waiters: Mutex<Vec<Waker>>,
    closed: AtomicBool,
}

/// Why a request was not queued.
pub(crate) enum Refused<T> {
    Full(T),
    Closed,
}

impl<T> Inbox<T> {
    pub(crate) fn new(capacity: usize) -> Inbox<T> {
        Inbox {
            queue: ArrayQueue::new(capacity.max(1)),
            parked: AtomicBool::new(false),
            dispatcher: Mutex::new(None),
            space_wanted: AtomicBool::new(false),
            space_waiters: Mutex::new(Vec::new()),
            closed: AtomicBool::new(false),
        }
    }

    /// Queues a request and wakes the executor if it sleeps.
    pub(crate) fn push(&self, request: T) -> Result<(), Refused<T>> {
        if self.closed.load(SeqCst) {
            return Err(Refused::Closed);
        }
        self.queue.push(request).map_err(Refused::Full)?;
        if self.parked.load(SeqCst) && self.parked.swap(false, SeqCst) {
            if let Some(waker) = self.dispatcher.lock().expect("inbox lock").take() {
                waker.wake();
            }
        }
        Ok(())
    }

    /// Ready once the queue has room (or is closed); the caller then tries `push` again.
    pub(crate) fn poll_room(&self, cx: &mut Context<'_>) -> Poll<()> {
        if !self.queue.is_full() || self.closed.load(SeqCst) {
            return Poll::Ready(());
        }
        self.space_waiters.lock().expect("inbox lock").push(cx.waker().clone());
        self.space_wanted.store(true, SeqCst);
        if !self.queue.is_full() {
            return Poll::Ready(());
        }
        Poll::Pending
    }

    /// The executor's wait: ready when requests are queued or the inbox closed.
    pub(crate) fn poll_requests(&self, cx: &mut Context<'_>) -> Poll<()> {
        if !self.queue.is_empty() || self.closed.load(SeqCst) {
            return Poll::Ready(());
        }
        *self.dispatcher.lock().expect("inbox lock") = Some(cx.waker().clone());
        self.parked.store(true, SeqCst);
        if !self.queue.is_empty() || self.closed.load(SeqCst) {
            self.parked.store(false, SeqCst);
            return Poll::Ready(());
        }
        Poll::Pending
    }

    /// Takes up to `max` requests; wakes senders waiting for room if any were taken.
    pub(crate) fn drain(&self, max: usize, mut handle: impl FnMut(T)) -> usize {
        let mut taken = 0;
        while taken < max {
            match self.queue.pop() {
                Some(request) => handle(request),
                None => break,
            }
            taken += 1;
        }
        if taken > 0 && self.space_wanted.swap(false, SeqCst) {
            for waker in std::mem::take(&mut *self.space_waiters.lock().expect("inbox lock")) {
                waker.wake();
            }
        }
        taken
    }

    /// Refuses new requests; the executor drains what is queued and stops.
    pub(crate) fn close(&self) {
        self.closed.store(true, SeqCst);
        if let Some(waker) = self.dispatcher.lock().expect("inbox lock").take() {
            waker.wake();
        }
        for waker in std::mem::take(&mut *self.space_waiters.lock().expect("inbox lock")) {
            waker.wake();
        }
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(SeqCst)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}
