//! Executor threads: one glommio executor per core, pinned, each owning whole physical shards.
//!
//! An executor opens its shards (replaying their logs), reports that it is ready, then runs
//! its dispatcher: drain the inbox, hand each request to its shard (writes join the shard's
//! next group commit), yield so that the logs flush and the committers answer, and park when
//! there is nothing to do. Nothing is shared between executors.

use std::collections::HashMap;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;

use glommio::{LocalExecutorBuilder, Placement};
use tradeshard_shard::{DiskShard, ShardConfig, TradeCache};

use crate::error::{Error, Result};
use crate::inbox::Inbox;
use crate::ops::{ExecutorShards, Request};
use crate::options::Options;
use crate::outbox::Outbox;
use crate::routing::Routing;

/// Requests handed to shards before the dispatcher yields to the flushers.
const DRAIN_BATCH_MAX: usize = 4096;

/// What an executor needs to start.
pub(crate) struct ExecutorPlan {
    pub index: usize,
    /// Each shard's id, directory, and cache of trades (which the handle reads too).
    pub shard_dirs: Vec<(u32, PathBuf, Arc<TradeCache>)>,
    /// Every executor's inbox; this executor drains its own (`index`) and hands follow-ups
    /// to the others through its outbox (`outbox.rs`).
    pub inboxes: Vec<Arc<Inbox<Request>>>,
    pub routing: Routing,
    /// This executor's beat, watched by the engine's kicker (`kick.rs`).
    pub beat: Arc<crate::kick::Beat>,
}

/// An executor recovering its shards, waiting to be told whether to start them.
pub(crate) struct StartingExecutor {
    index: usize,
    handle: JoinHandle<Result<()>>,
    /// The executor's two reports: its shards recovered, then its shards started.
    reports: mpsc::Receiver<Result<()>>,
    go: mpsc::Sender<bool>,
}

impl StartingExecutor {
    fn stopped(&self) -> Error {
        stopped(self.index, "stopped while opening its shards")
    }

    /// Waits until the executor has verified and replayed its shards' logs (nothing on disk
    /// changed yet), or refused one of them.
    pub(crate) fn recovered(&self) -> Result<()> {
        self.reports.recv().unwrap_or_else(|_| Err(self.stopped()))
    }

    /// With `go`, has the executor repair and start its shards and returns it running; without,
    /// has it drop what it recovered (changing nothing) and stop. Called once `recovered`
    /// answered, whatever it answered.
    pub(crate) fn finish(self, go: bool) -> Result<Option<JoinHandle<Result<()>>>> {
        if !go {
            // An executor that refused has stopped already; the send then fails, harmlessly.
            let _ = self.go.send(false);
            let _ = join(self.index, self.handle);
            return Ok(None);
        }
        if self.go.send(true).is_err() {
            let error = self.stopped();
            let _ = join(self.index, self.handle);
            return Err(error);
        }
        match self.reports.recv() {
            Ok(Ok(())) => Ok(Some(self.handle)),
            Ok(Err(error)) => {
                let _ = join(self.index, self.handle);
                Err(error)
            }
            Err(_) => {
                let error = self.stopped();
                let _ = join(self.index, self.handle);
                Err(error)
            }
        }
    }
}

fn stopped(executor: usize, what: &str) -> Error {
    Error::Executor { executor, source: Arc::new(std::io::Error::other(what.to_string())) }
}

/// Starts executor `plan.index`, which recovers its shards and then waits for
/// [`StartingExecutor::finish`].
pub(crate) fn start(plan: ExecutorPlan, options: &Options) -> Result<StartingExecutor> {
    let index = plan.index;
    let placement = if options.pin { Placement::Fixed(index % crate::options::cores()) } else { Placement::Unbound };
    let shard_config = ShardConfig {
        shard_id: 0,
        durability: options.durability,
        sync_method: options.sync_method,
        segment_bytes: options.segment_bytes,
        pending_records_max: options.queue_depth_max,
        // Each shard's is its cache's budget (set below, with its id).
        cache_bytes: 0,
        upkeep: options.upkeep,
    };
    let read_only = options.read_only;
    let (report_tx, reports) = mpsc::channel();
    let (go, go_rx) = mpsc::channel();
    let builder =
        LocalExecutorBuilder::new(placement).io_memory(options.io_memory_bytes).preempt_timer(options.preempt_interval);
    // The thread is the engine's, not glommio's (`LocalExecutorBuilder::spawn`), so that the
    // kicker knows it before the executor's loop first turns (`kick.rs`).
    let handle = std::thread::Builder::new()
        .name(format!("tradeshard-{index}"))
        .spawn(move || {
            match make(builder) {
                Ok(executor) => {
                    // Known once made, not while glommio makes it: a kick then could interrupt
                    // its registration of I/O memory, which some kernels fail with EINTR.
                    let _known = plan.beat.on_this_thread();
                    executor.run(run(plan, shard_config, read_only, report_tx, go_rx))
                }
                Err(error) => {
                    let error = Error::Executor { executor: index, source: Arc::new(error) };
                    let _ = report_tx.send(Err(error.clone()));
                    Err(error)
                }
            }
        })
        .map_err(|e| Error::Executor { executor: index, source: Arc::new(e) })?;
    Ok(StartingExecutor { index, handle, reports, go })
}

/// Makes the executor on this thread. glommio panics where it could have failed (I/O memory
/// it cannot allocate), so its panic is the error too (where panics unwind).
fn make(builder: LocalExecutorBuilder) -> std::io::Result<glommio::LocalExecutor> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| builder.make())) {
        Ok(made) => made.map_err(std::io::Error::from),
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            Err(std::io::Error::other(format!("glommio could not make the executor: {what}")))
        }
    }
}

/// Joins an executor's thread: what its run returned, or the panic that ended it.
pub(crate) fn join(executor: usize, handle: JoinHandle<Result<()>>) -> Result<()> {
    handle.join().unwrap_or_else(|_| Err(stopped(executor, "panicked")))
}

async fn run(
    plan: ExecutorPlan,
    shard_config: ShardConfig,
    read_only: bool,
    report: mpsc::Sender<Result<()>>,
    go: mpsc::Receiver<bool>,
) -> Result<()> {
    let _beating = plan.beat.start_on_executor();
    // First every shard is recovered, reading only.
    let mut recovered = Vec::new();
    for (shard_id, dir, cache) in &plan.shard_dirs {
        let config = ShardConfig { shard_id: *shard_id, cache_bytes: cache.budget(), ..shard_config.clone() };
        match DiskShard::recover_dir(dir, &config).await {
            Ok(shard) => recovered.push((*shard_id, shard, cache.clone())),
            Err(error) => {
                drop(recovered);
                release_closed_files().await;
                let _ = report.send(Err(error.into()));
                return Ok(());
            }
        }
    }
    let _ = report.send(Ok(()));
    // Then, once every executor's shards recovered, they start (repairs included). Nothing
    // else runs on this executor yet, so waiting on the channel blocks nothing.
    if !plan.beat.parked_while(|| go.recv()).unwrap_or(false) {
        drop(recovered);
        release_closed_files().await;
        return Ok(());
    }
    let mut shards = ExecutorShards {
        routing: plan.routing,
        shards: HashMap::new(),
        outbox: Outbox::new(plan.inboxes.clone()),
        requests_in_place: Default::default(),
    };
    for (shard_id, shard, cache) in recovered {
        match shard.start_with_cache(cache).await {
            Ok(shard) => {
                // Before the routing, which may queue a record of the claims it found.
                if read_only {
                    shard.refuse_writes();
                }
                shard.set_routing(plan.routing.users());
                shards.shards.insert(shard_id, shard);
            }
            Err(error) => {
                for (_, shard) in shards.shards {
                    let _ = shard.close().await;
                }
                release_closed_files().await;
                let _ = report.send(Err(error.into()));
                return Ok(());
            }
        }
    }
    let _ = report.send(Ok(()));
    let inbox = plan.inboxes[plan.index].clone();
    let shards = Rc::new(shards);
    let running_here = crate::local::enter(inbox.clone(), shards.clone());
    loop {
        std::future::poll_fn(|cx| inbox.poll_requests(cx)).await;
        let taken = inbox.drain(DRAIN_BATCH_MAX, |job| job.run(&shards));
        if taken == 0 && inbox.is_closed() && inbox.is_drained() {
            break;
        }
        futures_lite::future::yield_now().await;
    }
    // Requests made on this thread from now on go to the closed inbox, and are refused.
    drop(running_here);
    let Ok(shards) = Rc::try_unwrap(shards) else {
        unreachable!("only this loop and the thread's naming held the executor's shards")
    };
    let mut first_error = None;
    for (_, shard) in shards.shards {
        if let Err(error) = shard.close().await {
            first_error.get_or_insert(Error::from(error));
        }
    }
    release_closed_files().await;
    first_error.map_or(Ok(()), Err)
}

/// glommio closes a dropped file by queueing an asynchronous close on the executor's ring; one
/// more turn of the reactor submits them, so that no descriptor outlives the executor.
async fn release_closed_files() {
    glommio::timer::sleep(std::time::Duration::from_millis(1)).await;
}
