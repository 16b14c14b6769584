//! The one-shot reply of every request: the shard answers through it, the asker awaits it, on
//! any thread or runtime.
//!
//! One allocation per request (the shared slot), which may be the request's own: a holder of
//! a [`ReplySlot`] (the engine's job, carrying the operation too) makes both ends
//! ([`Reply::of`], [`ReplyFuture::of`]), so that the request and its answer cost one
//! allocation, freed by the asker when it has read the answer rather than by the answering
//! thread (a free across threads is the allocator's slow path). Sending stores the answer and
//! wakes the asker's waker (a thread unpark for blocking callers, a task wake for async ones);
//! it never runs the asker's code, so a shard may answer while it holds its own borrows. A
//! [`Reply`] dropped without an answer (an executor that stopped) resolves the future to
//! `None`.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

struct Slot<T> {
    value: Option<T>,
    waker: Option<Waker>,
    sender_gone: bool,
}

/// Where one answer waits for its asker: alone ([`channel`]) or inside what holds it
/// ([`HoldsReply`]).
pub struct ReplySlot<T>(Mutex<Slot<T>>);

impl<T> Default for ReplySlot<T> {
    fn default() -> Self {
        ReplySlot(Mutex::new(Slot { value: None, waker: None, sender_gone: false }))
    }
}

impl<T> ReplySlot<T> {
    fn lock(&self) -> std::sync::MutexGuard<'_, Slot<T>> {
        self.0.lock().expect("reply slot lock")
    }
}

/// A value that holds the [`ReplySlot`] of its answer.
pub trait HoldsReply<T>: Send + Sync {
    fn reply_slot(&self) -> &ReplySlot<T>;
}

impl<T: Send> HoldsReply<T> for ReplySlot<T> {
    fn reply_slot(&self) -> &ReplySlot<T> {
        self
    }
}

type Shared<T> = Arc<dyn HoldsReply<T>>;

/// Where the answer to one request goes; answer it once with [`send`](Reply::send).
pub struct Reply<T>(Option<Shared<T>>);

/// The asker's end: a future of the answer, `None` if the [`Reply`] was dropped unanswered.
pub struct ReplyFuture<T>(Shared<T>);

/// A connected [`Reply`] and [`ReplyFuture`].
pub fn channel<T: Send + 'static>() -> (Reply<T>, ReplyFuture<T>) {
    let slot = Arc::new(ReplySlot::default());
    (Reply::of(slot.clone()), ReplyFuture::of(slot))
}

impl<T> Reply<T> {
    /// The one [`Reply`] to the slot `holder` holds, whose [`ReplyFuture`] came from
    /// [`ReplyFuture::of`].
    pub fn of<H: HoldsReply<T> + 'static>(holder: Arc<H>) -> Reply<T> {
        Reply(Some(holder))
    }

    /// Delivers the answer and wakes the asker.
    pub fn send(mut self, value: T) {
        let shared = self.0.take().expect("a reply is sent once");
        let waker = {
            let mut slot = shared.reply_slot().lock();
            slot.value = Some(value);
            slot.waker.take()
        };
        // The asker, once woken, holds the last reference and frees the slot on its own
        // thread.
        drop(shared);
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

impl<T> Drop for Reply<T> {
    fn drop(&mut self) {
        if let Some(shared) = self.0.take() {
            let waker = {
                let mut slot = shared.reply_slot().lock();
                slot.sender_gone = true;
                slot.waker.take()
            };
            drop(shared);
            if let Some(waker) = waker {
                waker.wake();
            }
        }
    }
}

impl<T> ReplyFuture<T> {
    /// The asker's end of the slot `holder` holds; its [`Reply`] is made with [`Reply::of`].
    pub fn of<H: HoldsReply<T> + 'static>(holder: Arc<H>) -> ReplyFuture<T> {
        ReplyFuture(holder)
    }

    /// The answer, if it has come (without waiting).
    pub fn try_take(&mut self) -> Option<T> {
        self.0.reply_slot().lock().value.take()
    }
}

impl<T> Future for ReplyFuture<T> {
    type Output = Option<T>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let mut slot = self.0.reply_slot().lock();
        if let Some(value) = slot.value.take() {
            return Poll::Ready(Some(value));
        }
        if slot.sender_gone {
            return Poll::Ready(None);
        }
        match &slot.waker {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            _ => slot.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_crosses_threads() {
        let (tx, rx) = channel();
        let sender = std::thread::spawn(move || tx.send(42));
        assert_eq!(futures_lite::future::block_on(rx), Some(42));
        sender.join().unwrap();
    }

    #[test]
    fn a_dropped_sender_resolves_to_none() {
        let (tx, rx) = channel::<u32>();
        drop(tx);
        assert_eq!(futures_lite::future::block_on(rx), None);
    }

    /// A request carrying its own reply slot, as the engine's jobs do.
    struct Request {
        asked: u32,
        answer: ReplySlot<u32>,
    }

    impl HoldsReply<u32> for Request {
        fn reply_slot(&self) -> &ReplySlot<u32> {
            &self.answer
        }
    }

    #[test]
    fn a_slot_held_by_its_request_answers_and_is_freed_by_the_asker() {
        let request = Arc::new(Request { asked: 20, answer: ReplySlot::default() });
        let rx = ReplyFuture::of(request.clone());
        let answering = std::thread::spawn(move || {
            let doubled = request.asked * 2;
            Reply::of(request).send(doubled)
        });
        answering.join().unwrap();
        assert_eq!(Arc::strong_count(&rx.0), 1, "the answering side let go of the slot");
        assert_eq!(futures_lite::future::block_on(rx), Some(40));
        let request = Arc::new(Request { asked: 1, answer: ReplySlot::default() });
        let rx = ReplyFuture::of(request.clone());
        drop(Reply::of(request));
        let answered = futures_lite::future::block_on(futures_lite::future::poll_once(rx));
        assert_eq!(answered, Some(None), "a reply dropped unanswered resolves the future");
    }

    #[test]
    fn try_take_answers_only_once_sent() {
        let (tx, mut rx) = channel();
        assert_eq!(rx.try_take(), None);
        tx.send(7);
        assert_eq!(rx.try_take(), Some(7));
        assert_eq!(rx.try_take(), None);
    }
}
