//! The one-shot reply of every request: the shard answers through it, the asker awaits it, on
//! any thread or runtime.
//!
//! One allocation per request (the shared slot). Sending stores the answer and wakes the
//! asker's waker (a thread unpark for blocking callers, a task wake for async ones); it never
//! runs the asker's code, so a shard may answer while it holds its own borrows. A [`Reply`]
//! dropped without an answer (an executor that stopped) resolves the future to `None`.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

struct Slot<T> {
    value: Option<T>,
    waker: Option<Waker>,
    sender_gone: bool,
}

/// Where the answer to one request goes; answer it once with [`send`](Reply::send).
pub struct Reply<T>(Option<Arc<Mutex<Slot<T>>>>);

/// The asker's end: a future of the answer, `None` if the [`Reply`] was dropped unanswered.
pub struct ReplyFuture<T>(Arc<Mutex<Slot<T>>>);

/// A connected [`Reply`] and [`ReplyFuture`].
pub fn channel<T>() -> (Reply<T>, ReplyFuture<T>) {
    let slot = Arc::new(Mutex::new(Slot { value: None, waker: None, sender_gone: false }));
    (Reply(Some(slot.clone())), ReplyFuture(slot))
}

impl<T> Reply<T> {
    /// Delivers the answer and wakes the asker.
    pub fn send(mut self, value: T) {
        let slot = self.0.take().expect("a reply is sent once");
        let waker = {
            let mut slot = slot.lock().expect("reply slot lock");
            slot.value = Some(value);
            slot.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

impl<T> Drop for Reply<T> {
    fn drop(&mut self) {
        if let Some(slot) = self.0.take() {
            let waker = {
                let mut slot = slot.lock().expect("reply slot lock");
                slot.sender_gone = true;
                slot.waker.take()
            };
            if let Some(waker) = waker {
                waker.wake();
            }
        }
    }
}

impl<T> ReplyFuture<T> {
    /// The answer, if it has come (without waiting).
    pub fn try_take(&mut self) -> Option<T> {
        self.0.lock().expect("reply slot lock").value.take()
    }
}

impl<T> Future for ReplyFuture<T> {
    type Output = Option<T>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let mut slot = self.0.lock().expect("reply slot lock");
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

    #[test]
    fn try_take_answers_only_once_sent() {
        let (tx, mut rx) = channel();
        assert_eq!(rx.try_take(), None);
        tx.send(7);
        assert_eq!(rx.try_take(), Some(7));
        assert_eq!(rx.try_take(), None);
    }
}
