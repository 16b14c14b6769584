//! A one-shot reply from an executor thread to whoever asked, on any thread or runtime.
//!
//! One allocation per request (the shared slot); the sender wakes the receiver's waker, which
//! is a thread unpark for blocking callers and a (cross-thread) task wake for async ones. A
//! sender dropped without a reply (an executor that stopped) resolves the receiver to `None`.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

struct Slot<T> {
    value: Option<T>,
    waker: Option<Waker>,
    sender_gone: bool,
}

/// The executor's end.
pub(crate) struct ReplyTx<T>(Option<Arc<Mutex<Slot<T>>>>);

/// The caller's end: a future of the reply.
pub(crate) struct ReplyRx<T>(Arc<Mutex<Slot<T>>>);

pub(crate) fn channel<T>() -> (ReplyTx<T>, ReplyRx<T>) {
    let slot = Arc::new(Mutex::new(Slot { value: None, waker: None, sender_gone: false }));
    (ReplyTx(Some(slot.clone())), ReplyRx(slot))
}

impl<T> ReplyTx<T> {
    pub(crate) fn send(mut self, value: T) {
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

impl<T> Drop for ReplyTx<T> {
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

impl<T> Future for ReplyRx<T> {
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
}
