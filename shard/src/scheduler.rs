//! The shard's scheduler: the one task that delivers scheduled messages (delayed publishes
//! and retries) when they come due, by writing their `Release` records through the ordinary
//! write path, so a release is as durable, and as idempotent, as any other message write.
//!
//! It sleeps until the earliest entry is due (at most a second, so a clock that jumps is
//! noticed), or until the committer applies a record that scheduled something, and ends when
//! the shard closes or its log fails. A release in flight holds its entry's key, so an entry is
//! released once; the scheduler waits for every release of a round to be answered before it
//! looks again, and after a refused one (a full log queue) waits a little more, so that the
//! log's flusher runs and makes room.

use std::rc::Rc;
use std::task::Poll;
use std::time::Duration;

use tradeshard_wal::disk::Disk;

use crate::message_write::{message_on, MessageCommand};
use crate::state::Inner;
use crate::trade::now_ms;

/// Most releases written in one round.
const RELEASES_PER_ROUND: usize = 4096;
/// The longest the scheduler sleeps without looking.
const LOOK_EVERY: Duration = Duration::from_secs(1);
/// How long the scheduler waits after a release was refused.
const AFTER_REFUSAL: Duration = Duration::from_millis(10);

/// Runs until the shard closes or its log fails.
pub(crate) async fn run<D: Disk>(inner: Rc<Inner<D>>) {
    loop {
        {
            let accepted = inner.accepted.borrow();
            if accepted.closing || accepted.failed.is_some() {
                return;
            }
        }
        let now = now_ms();
        let due: Vec<u64> = inner.index.borrow().messages().due(now).take(RELEASES_PER_ROUND).collect();
        if due.is_empty() {
            let next = inner.index.borrow().messages().next_due();
            let sleep = next.map_or(LOOK_EVERY, |due| Duration::from_millis(due.saturating_sub(now)).min(LOOK_EVERY));
            futures_lite::future::or(glommio::timer::sleep(sleep), woken(&inner)).await;
            continue;
        }
        let mut answers = Vec::with_capacity(due.len());
        for scheduled in due {
            let (reply, answer) = crate::reply::channel();
            message_on(&inner, MessageCommand::Release { scheduled }, reply, false);
            answers.push(answer);
        }
        let mut refused = false;
        for answer in answers {
            refused |= !matches!(answer.await, Some(Ok(_)));
        }
        if refused {
            glommio::timer::sleep(AFTER_REFUSAL).await;
        }
    }
}

/// Completes once the committer (or a close) wakes the scheduler.
fn woken<D: Disk>(inner: &Inner<D>) -> impl std::future::Future<Output = ()> + '_ {
    let mut registered = false;
    std::future::poll_fn(move |cx| {
        if registered {
            return Poll::Ready(());
        }
        registered = true;
        inner.accepted.borrow_mut().scheduler = Some(cx.waker().clone());
        Poll::Pending
    })
}
