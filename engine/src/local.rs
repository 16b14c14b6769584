//! Requests made on the executor that owns them: run where they are made, with no hand-off.
//!
//! A task running on an engine's executor (a service's connection, [`EngineHandle::spawn_on`],
//! or the load tool's clients) that asks for an operation of that same executor's shards would
//! otherwise push it to the executor's own inbox and wake the dispatcher, which is itself, and
//! have its answer woken back: two cross-thread hand-offs between a thread and itself. Here the
//! executor names its shards to its thread while it runs them, and the handle runs such a
//! request at once, on the caller's turn, exactly as the dispatcher would have run it. The
//! answer still arrives through the request's reply, woken on the same thread.
//!
//! What changes, and why it is sound: the request skips the inbox's queue, so it may run before
//! requests other threads queued earlier. Requests of different callers carry no order between
//! them, and a caller's own requests still run in the order it makes them. The inbox's bound
//! (`FullQueue::Executor`) does not apply to it; the shard's do (a write meets the log's
//! queue, and a full one waits in the shard or is refused as `Backpressure`, as from the
//! inbox). Nothing runs inside another request's start: a task's turn never begins inside
//! the dispatcher's. A request run here may be answered before its caller ever waits (a
//! refusal, a repeat, a full log's queue); the handle then yields once the task's time slice is
//! used up, so a caller looping on such answers holds its executor's flushers and committers
//! back for at most a slice (`Options::preempt_interval`).
//!
//! [`EngineHandle::spawn_on`]: crate::EngineHandle::spawn_on

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;

use crate::inbox::Inbox;
use crate::ops::{ExecutorShards, Request};

thread_local! {
    /// The inbox of the executor running on this thread (which engine and which executor it
    /// is), null on any other thread: the one look every request pays, without a destructor to
    /// register or a borrow to take.
    static HERE: Cell<*const Inbox<Request>> = const { Cell::new(std::ptr::null()) };
    /// That executor's shards.
    static SHARDS: RefCell<Option<Rc<ExecutorShards>>> = const { RefCell::new(None) };
}

/// Names this thread's executor until dropped.
pub(crate) struct Running {
    /// Kept while named, so that no other inbox can take its address meanwhile.
    _inbox: Arc<Inbox<Request>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        HERE.with(|here| here.set(std::ptr::null()));
        SHARDS.with(|shards| shards.borrow_mut().take());
    }
}

/// Names `shards`, the shards of the executor that drains `inbox`, to requests made on this
/// thread, until the guard drops.
pub(crate) fn enter(inbox: Arc<Inbox<Request>>, shards: Rc<ExecutorShards>) -> Running {
    SHARDS.with(|named| *named.borrow_mut() = Some(shards));
    HERE.with(|here| here.set(Arc::as_ptr(&inbox)));
    Running { _inbox: inbox }
}

/// Runs `request` now if this thread is the executor draining `inbox`; gives it back otherwise.
pub(crate) fn run_here(inbox: &Arc<Inbox<Request>>, request: Request) -> Option<Request> {
    if !HERE.with(|here| std::ptr::eq(here.get(), Arc::as_ptr(inbox))) {
        return Some(request);
    }
    let shards = SHARDS.with(|shards| shards.borrow().clone()).expect("an executor named with its shards");
    shards.requests_in_place.set(shards.requests_in_place.get() + 1);
    request.run(&shards);
    None
}
