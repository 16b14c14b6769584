//! Recovery of flexible transactions: a thread that finds every activity not completed and
//! drives it to its end, once when the engine opens and then every
//! `Options::activity_recovery_interval`, until the engine closes.
//!
//! Undecided past its deadline, an activity is cancelled (its initiator stopped); decided, its
//! decision is sent again to every branch until each answered, then it is completed. Steps are
//! idempotent, so driving an activity that its initiator is still driving changes nothing
//! more; to spare that work, recovery leaves alone a decided activity younger than one
//! interval. The thread only sends requests through a handle: the executors stay the only
//! owners of the shards.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use tradeshard_shard::{finish_activity, ActivityState};

use crate::error::{Error, Result};
use crate::handle::EngineHandle;
use crate::ops;
use crate::transfers::now_ms;

/// The recovery thread, stopped and joined by [`ActivityRecovery::stop`].
pub(crate) struct ActivityRecovery {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl ActivityRecovery {
    /// Drives every activity not completed once (before the engine takes requests), then
    /// starts the thread that does it every `interval`. A failure of that first pass (a full
    /// disk) does not refuse the open: what it could not finish stays recorded, in doubt, for
    /// the thread's next passes.
    pub(crate) fn start(handle: EngineHandle, interval: Duration) -> Result<ActivityRecovery> {
        let _ = futures_lite::future::block_on(recover_once(&handle, Duration::ZERO));
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::Builder::new()
            .name("tradeshard-activities".into())
            .spawn(move || {
                while !stopping.load(Ordering::Acquire) {
                    std::thread::park_timeout(interval);
                    if stopping.load(Ordering::Acquire) {
                        return;
                    }
                    // A failure (a shard that failed, the engine closing) is met again at the
                    // next pass; what recovery owes stays recorded in the shards.
                    if let Err(Error::Closed) = futures_lite::future::block_on(recover_once(&handle, interval)) {
                        return;
                    }
                    if let Err(Error::Closed) = futures_lite::future::block_on(crate::checkers::check_once(&handle)) {
                        return;
                    }
                }
            })
            .map_err(|source| Error::Io {
                op: "start the activity recovery thread",
                path: "".into(),
                source: Arc::new(source),
            })?;
        Ok(ActivityRecovery { stop, thread: Some(thread) })
    }

    /// Stops the thread and waits for it.
    pub(crate) fn stop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            thread.thread().unpark();
            let _ = thread.join();
        }
    }
}

/// Activities driven at once within a pass: one whose participant does not answer holds up
/// the others of its window for `Options::participant_timeout`, not every activity after it.
const DRIVEN_AT_ONCE: usize = 64;

/// Drives every activity not completed, `DRIVEN_AT_ONCE` at a time; a decided one younger than
/// `grace`, or still driven by a caller, is left to its initiator. One that fails (a shard that failed, a participant that
/// does not answer) is met again at the next pass. Returns how many were driven to their end;
/// `Closed` once the engine closes.
pub(crate) async fn recover_once(handle: &EngineHandle, grace: Duration) -> Result<usize> {
    let now = now_ms();
    let due: Vec<_> = handle
        .on_every_executor(ops::UnfinishedActivities)
        .await?
        .into_iter()
        .flatten()
        .filter(|(_, activity, entry)| {
            // A decided one is left to its initiator while young, and while a caller of this
            // engine still drives it (else both would send its outcome to every branch).
            let young = now.saturating_sub(entry.begun_ms) < grace.as_millis() as u64;
            let driven = handle.inner.driving.is_driven(*activity);
            !(matches!(entry.state, ActivityState::Decided(_)) && (young || driven))
        })
        .collect();
    let mut driven = 0;
    for window in due.chunks(DRIVEN_AT_ONCE) {
        let ends = tradeshard_shard::join_all(
            window.iter().map(|(home, activity, entry)| finish_activity(handle, *home, *activity, entry, now_ms())),
        )
        .await;
        for end in ends {
            match end {
                Ok(Some(end)) if end.completed => driven += 1,
                Ok(_) => {}
                Err(Error::Closed) => return Err(Error::Closed),
                Err(_) => {}
            }
        }
    }
    Ok(driven)
}
