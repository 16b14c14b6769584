//! Stopping the server: a flag that every task of it checks between steps (accept loops and
//! idle connections wake to look at least every [`CHECK_INTERVAL`]), and a count of its tasks
//! that the stopper waits to see reach zero.
//!
//! Polling a flag rather than waking every task keeps the tasks free of cross-thread wakers;
//! what it costs is a stop that takes up to one interval longer.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// How often waiting tasks look at the flag.
pub(crate) const CHECK_INTERVAL: Duration = Duration::from_millis(100);

#[derive(Default)]
pub(crate) struct Shutdown {
    stopping: AtomicBool,
    /// Set by the first stop: a later one (the drop after `Server::stop`) waits no longer.
    deadline: std::sync::OnceLock<Instant>,
    tasks: AtomicUsize,
    ended: Mutex<()>,
    ended_signal: Condvar,
}

/// One task of the server, counted while it lives.
pub(crate) struct TaskGuard(Arc<crate::Shared>);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        let shutdown = &self.0.shutdown;
        if shutdown.tasks.fetch_sub(1, Ordering::SeqCst) == 1 {
            let _ended = shutdown.ended.lock().expect("shutdown lock");
            shutdown.ended_signal.notify_all();
        }
    }
}

impl Shutdown {
    pub(crate) fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Counts a task until the guard drops.
    pub(crate) fn track(shared: &Arc<crate::Shared>) -> TaskGuard {
        shared.shutdown.tasks.fetch_add(1, Ordering::SeqCst);
        TaskGuard(shared.clone())
    }

    /// Raises the flag and waits up to `wait` from the first stop for every task to end;
    /// whether they did.
    pub(crate) fn stop_and_wait(&self, wait: Duration) -> bool {
        self.stopping.store(true, Ordering::SeqCst);
        let deadline = *self.deadline.get_or_init(|| Instant::now() + wait);
        let mut ended = self.ended.lock().expect("shutdown lock");
        while self.tasks.load(Ordering::SeqCst) > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            ended = self.ended_signal.wait_timeout(ended, left).expect("shutdown lock").0;
        }
        true
    }
}
