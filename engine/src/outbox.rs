//! An executor's outbox: the jobs it hands other executors, gathered per turn.
//!
//! A create across shards moves between executors twice (the claimed create to the buyer's
//! executor, the claim's confirmation back to the home's), and such jobs come in bursts: a
//! group commit answers hundreds of writes at once. Pushed one by one, each would cost an
//! inbox push and possibly a wake-up of the other thread; gathered until the tasks woken in
//! this turn have run, one push of one job carries them all.
//!
//! The jobs go from a task that waits for room as a task (never from a dispatcher), so two
//! executors handing each other jobs cannot wait on each other forever. Jobs sent to one
//! executor may arrive in another order than they were sent: none of them depends on another.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;

use crate::inbox::Inbox;
use crate::ops::{hand_over, ExecutorShards, Job, Request};

/// Jobs for other executors, sent at the end of the turn that queued them.
pub(crate) struct Outbox {
    inboxes: Vec<Arc<Inbox<Request>>>,
    /// Per executor, the jobs queued since the last flush.
    queued: RefCell<Vec<Vec<Request>>>,
    /// A flush is spawned and has not taken the queued jobs yet.
    flush_spawned: Cell<bool>,
}

impl Outbox {
    pub(crate) fn new(inboxes: Vec<Arc<Inbox<Request>>>) -> Rc<Outbox> {
        let queued = RefCell::new((0..inboxes.len()).map(|_| Vec::new()).collect());
        Rc::new(Outbox { inboxes, queued, flush_spawned: Cell::new(false) })
    }

    /// Queues `job` for `executor`; it is pushed once the tasks ready now have run. A closed
    /// inbox drops it, which answers its asker `None` (the engine is closing).
    pub(crate) fn send(self: &Rc<Self>, executor: usize, job: Request) {
        self.queued.borrow_mut()[executor].push(job);
        if !self.flush_spawned.replace(true) {
            let outbox = self.clone();
            glommio::spawn_local(async move { outbox.flush().await }).detach();
        }
    }

    async fn flush(&self) {
        // Behind every task woken before this one: their jobs join this flush.
        futures_lite::future::yield_now().await;
        self.flush_spawned.set(false);
        let batches: Vec<(usize, Vec<Request>)> = self
            .queued
            .borrow_mut()
            .iter_mut()
            .enumerate()
            .filter(|(_, jobs)| !jobs.is_empty())
            .map(|(executor, jobs)| (executor, std::mem::take(jobs)))
            .collect();
        for (executor, mut jobs) in batches {
            let job: Request = match jobs.len() {
                1 => jobs.pop().expect("one job"),
                _ => Request::owned(Batch(jobs)),
            };
            hand_over(self.inboxes[executor].clone(), job).await;
        }
    }
}

/// Several jobs in one push.
struct Batch(Vec<Request>);

impl Job for Batch {
    fn run(self: Box<Self>, shards: &ExecutorShards) {
        for job in self.0 {
            job.run(shards);
        }
    }
}
