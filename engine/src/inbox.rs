//! An executor's inbox: the bounded queue through which any thread hands it requests (the
//! jobs of `ops.rs`; the queue knows nothing of them).
//!
//! Senders push without locks (`crossbeam_queue::ArrayQueue`); the executor drains it in
//! batches, so one wake-up serves every request that arrived meanwhile. When the executor has
//! nothing to do it parks its dispatcher task; a sender that finds it parked wakes it (a
//! glommio cross-thread wake). The `parked` flag and the queue are each written before the
//! other is read, with sequentially consistent ordering on both sides, so no wake-up is lost.
//! A full queue is backpressure: senders may wait for room (woken after each drain) or fail.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
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
    /// Senders between their look at `closed` and the end of their push: the executor stops
    /// only once none is, or a request pushed just after the close would never be answered.
    pushing: AtomicUsize,
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
            pushing: AtomicUsize::new(0),
        }
    }

    /// Queues a request and wakes the executor if it sleeps.
    pub(crate) fn push(&self, request: T) -> Result<(), Refused<T>> {
        self.push_after_look(request, || {})
    }

    /// [`push`](Self::push), calling `between` after the look at `closed` (a test's way to
    /// close the inbox in that window).
    fn push_after_look(&self, request: T, between: impl FnOnce()) -> Result<(), Refused<T>> {
        self.pushing.fetch_add(1, SeqCst);
        let closed = self.closed.load(SeqCst);
        between();
        let pushed = match closed {
            true => Err(Refused::Closed),
            false => self.queue.push(request).map_err(Refused::Full),
        };
        self.pushing.fetch_sub(1, SeqCst);
        pushed?;
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

    /// Nothing queued and no push under way. Once the inbox is closed and this holds, no
    /// request can arrive: a sender counts itself in `pushing` before it looks at `closed`.
    pub(crate) fn is_drained(&self) -> bool {
        self.pushing.load(SeqCst) == 0 && self.queue.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// The executor's loop as the engine runs it (`executor.rs`): what it took before it stopped.
    fn executor(inbox: Arc<Inbox<u64>>) -> std::thread::JoinHandle<usize> {
        std::thread::spawn(move || {
            let mut drained = 0;
            loop {
                let taken = inbox.drain(64, |_| drained += 1);
                if taken == 0 && inbox.is_closed() && inbox.is_drained() {
                    return drained;
                }
                std::thread::yield_now();
            }
        })
    }

    #[test]
    fn a_request_pushed_as_the_inbox_closes_is_drained_before_the_executor_stops() {
        let inbox = Arc::new(Inbox::<u64>::new(16));
        let running = executor(inbox.clone());
        // The sender found the inbox open; the close comes before its request is queued, and
        // the executor has time to find the queue empty.
        let pushed = inbox.push_after_look(7, || {
            inbox.close();
            std::thread::sleep(std::time::Duration::from_millis(50));
        });
        assert!(pushed.is_ok());
        assert_eq!(running.join().unwrap(), 1, "the request queued is taken, so its caller is answered");
        assert!(matches!(inbox.push(8), Err(Refused::Closed)));
    }

    /// Senders race the close while an executor drains: every request a sender was told is
    /// queued is taken by the executor before it stops.
    #[test]
    fn every_request_queued_before_or_during_the_close_is_drained() {
        for round in 0..50 {
            let inbox = Arc::new(Inbox::<u64>::new(1 << 16));
            let senders: Vec<_> = (0..2)
                .map(|_| {
                    let inbox = inbox.clone();
                    std::thread::spawn(move || (0..).take_while(|&n| inbox.push(n).is_ok()).count())
                })
                .collect();
            let running = executor(inbox.clone());
            std::thread::sleep(std::time::Duration::from_micros(50 + round % 7 * 20));
            inbox.close();
            let queued: usize = senders.into_iter().map(|sender| sender.join().unwrap()).sum();
            assert_eq!(running.join().unwrap(), queued, "round {round}");
        }
    }
}
