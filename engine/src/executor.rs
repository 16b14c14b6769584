//! Executor threads: one glommio executor per core, pinned, each owning whole physical shards.
//!
//! An executor opens its shards (replaying their logs), reports that it is ready, then runs
//! its dispatcher: drain the inbox, hand each request to its shard (writes join the shard's
//! next group commit), yield so that the logs flush and the committers answer, and park when
//! there is nothing to do. Nothing is shared between executors.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::mpsc;
use std::sync::Arc;

use glommio::{ExecutorJoinHandle, LocalExecutorBuilder, Placement};
use tradeshard_shard::{Shard, Trade, TradeError, TradeId};
use tradeshard_wal::disk::DmaDisk;
use tradeshard_wal::{SyncMethod, WalConfig};

use crate::error::{Error, Result};
use crate::inbox::{Inbox, Request};
use crate::options::Options;
use crate::reply::ReplyTx;

/// Requests handed to shards before the dispatcher yields to the flushers.
const DRAIN_BATCH_MAX: usize = 4096;

/// Frame payload limit of the shards' logs. Trade records are at most a few hundred bytes.
const TRADE_FRAME_PAYLOAD_BYTES: u32 = 64 << 10;

/// What an executor needs to start.
pub(crate) struct ExecutorPlan {
    pub index: usize,
    pub shard_dirs: Vec<(u32, PathBuf)>,
    pub cache_bytes_per_shard: usize,
    pub inbox: Arc<Inbox>,
}

/// An executor recovering its shards, waiting to be told whether to start them.
pub(crate) struct StartingExecutor {
    index: usize,
    handle: ExecutorJoinHandle<Result<()>>,
    /// The executor's two reports: its shards recovered, then its shards started.
    reports: mpsc::Receiver<Result<()>>,
    go: mpsc::Sender<bool>,
}

impl StartingExecutor {
    fn stopped(&self) -> Error {
        Error::Executor { executor: self.index, message: "stopped while opening its shards".into() }
    }

    /// Waits until the executor has verified and replayed its shards' logs (nothing on disk
    /// changed yet), or refused one of them.
    pub(crate) fn recovered(&self) -> Result<()> {
        self.reports.recv().unwrap_or_else(|_| Err(self.stopped()))
    }

    /// With `go`, has the executor repair and start its shards and returns it running; without,
    /// has it drop what it recovered (changing nothing) and stop. Called once `recovered`
    /// answered, whatever it answered.
    pub(crate) fn finish(self, go: bool) -> Result<Option<ExecutorJoinHandle<Result<()>>>> {
        if !go {
            // An executor that refused has stopped already; the send then fails, harmlessly.
            let _ = self.go.send(false);
            let _ = self.handle.join();
            return Ok(None);
        }
        if self.go.send(true).is_err() {
            let error = self.stopped();
            let _ = self.handle.join();
            return Err(error);
        }
        match self.reports.recv() {
            Ok(Ok(())) => Ok(Some(self.handle)),
            Ok(Err(error)) => {
                let _ = self.handle.join();
                Err(error)
            }
            Err(_) => {
                let error = self.stopped();
                let _ = self.handle.join();
                Err(error)
            }
        }
    }
}

/// Starts executor `plan.index`, which recovers its shards and then waits for
/// [`StartingExecutor::finish`].
pub(crate) fn start(plan: ExecutorPlan, options: &Options) -> Result<StartingExecutor> {
    let index = plan.index;
    let placement = if options.pin { Placement::Fixed(index % crate::options::cores()) } else { Placement::Unbound };
    let wal_config = WalConfig {
        durability: options.durability,
        segment_bytes: options.segment_bytes,
        pending_records_max: options.queue_depth_max.max(1 << 16),
        // A point read decodes one piece (`WalConfig::piece_raw_bytes`), not its frame; the
        // frame limit bounds what a sequential reader decodes at once.
        frame_payload_bytes_max: TRADE_FRAME_PAYLOAD_BYTES,
        record_bytes_max: tradeshard_shard::record::RECORD_BYTES_MAX as u32,
        ..WalConfig::default()
    };
    let sync_method = options.sync_method;
    let (report_tx, reports) = mpsc::channel();
    let (go, go_rx) = mpsc::channel();
    let handle = LocalExecutorBuilder::new(placement)
        .name(&format!("tradeshard-{index}"))
        .io_memory(options.io_memory_bytes)
        .spawn(move || run(plan, wal_config, sync_method, report_tx, go_rx))
        .map_err(|e| Error::Executor { executor: index, message: e.to_string() })?;
    Ok(StartingExecutor { index, handle, reports, go })
}

async fn run(
    plan: ExecutorPlan,
    wal_config: WalConfig,
    sync_method: SyncMethod,
    report: mpsc::Sender<Result<()>>,
    go: mpsc::Receiver<bool>,
) -> Result<()> {
    // First every shard is recovered, reading only.
    let mut recovered = Vec::new();
    for (shard_id, dir) in &plan.shard_dirs {
        let config = WalConfig { shard_id: *shard_id, ..wal_config.clone() };
        let outcome = match DmaDisk::new(dir) {
            Ok(disk) => Shard::recover(disk.with_sync_method(sync_method), config, plan.cache_bytes_per_shard).await,
            Err(e) => Err(TradeError::Log(tradeshard_wal::Error::Io {
                op: "create directory",
                path: dir.clone(),
                source: Arc::new(e),
            })),
        };
        match outcome {
            Ok(shard) => recovered.push((*shard_id, shard)),
            Err(source) => {
                drop(recovered);
                release_closed_files().await;
                let _ = report.send(Err(Error::ShardOpen { shard: *shard_id, source }));
                return Ok(());
            }
        }
    }
    let _ = report.send(Ok(()));
    // Then, once every executor's shards recovered, they start (repairs included). Nothing
    // else runs on this executor yet, so waiting on the channel blocks nothing.
    if !go.recv().unwrap_or(false) {
        drop(recovered);
        release_closed_files().await;
        return Ok(());
    }
    let mut shards = HashMap::new();
    for (shard_id, shard) in recovered {
        match shard.start().await {
            Ok(shard) => {
                shards.insert(shard_id, shard);
            }
            Err(source) => {
                for (_, shard) in shards {
                    let _ = shard.close().await;
                }
                release_closed_files().await;
                let _ = report.send(Err(Error::ShardOpen { shard: shard_id, source }));
                return Ok(());
            }
        }
    }
    let _ = report.send(Ok(()));
    let inbox = plan.inbox;
    loop {
        std::future::poll_fn(|cx| inbox.poll_requests(cx)).await;
        let taken = inbox.drain(DRAIN_BATCH_MAX, |request| dispatch(&shards, request));
        if taken == 0 && inbox.is_closed() && inbox.is_empty() {
            break;
        }
        futures_lite::future::yield_now().await;
    }
    let mut first_error = None;
    for (shard_id, shard) in shards {
        if let Err(source) = shard.close().await {
            first_error.get_or_insert(Error::ShardOpen { shard: shard_id, source });
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

/// Starts every get of a batch; the reply goes once the last one is answered (at once when
/// all were cache hits).
fn get_many(shards: &HashMap<u32, Shard<DmaDisk>>, items: Vec<(u32, TradeId)>, reply: ReplyTx<Vec<Result<Trade>>>) {
    struct Gathering {
        results: Vec<Option<Result<Trade>>>,
        missing: usize,
        reply: Option<ReplyTx<Vec<Result<Trade>>>>,
    }
    if items.is_empty() {
        return reply.send(Vec::new());
    }
    let gathering =
        Rc::new(RefCell::new(Gathering { results: vec![None; items.len()], missing: items.len(), reply: Some(reply) }));
    for (slot, (shard, id)) in items.into_iter().enumerate() {
        let gathering = gathering.clone();
        let shard = shards.get(&shard).expect("requests are routed to the executor owning the shard");
        shard.get(
            id,
            Box::new(move |outcome| {
                let mut gathering = gathering.borrow_mut();
                gathering.results[slot] = Some(outcome.map_err(Error::from));
                gathering.missing -= 1;
                if gathering.missing == 0 {
                    let results = gathering.results.drain(..).map(|r| r.expect("every slot answered")).collect();
                    gathering.reply.take().expect("replied once").send(results);
                }
            }),
        );
    }
}

fn dispatch(shards: &HashMap<u32, Shard<DmaDisk>>, request: Request) {
    let shard = |id: u32| shards.get(&id).expect("requests are routed to the executor owning the shard");
    match request {
        Request::Write { shard: id, command, reply } => {
            shard(id).submit(command, Box::new(move |outcome| reply.send(outcome.map_err(Error::from))))
        }
        Request::Get { shard: id, id: trade, reply } => {
            shard(id).get(trade, Box::new(move |outcome| reply.send(outcome.map_err(Error::from))))
        }
        Request::GetMany { items, reply } => get_many(shards, items, reply),
        Request::List { shard: id, query, reply } => {
            shard(id).list(query, Box::new(move |outcome| reply.send(outcome.map_err(Error::from))))
        }
        Request::Poll { shard: id, query, reply } => {
            shard(id).poll_raw_events(query, Box::new(move |outcome| reply.send(outcome.map_err(Error::from))))
        }
        Request::CommitOffset { shard: id, group, offset, reply } => {
            shard(id).commit_offset(&group, offset, Box::new(move |outcome| reply.send(outcome.map_err(Error::from))))
        }
        Request::Position { shard: id, group, reply } => {
            let shard = shard(id);
            reply.send((shard.committed_offset(&group), shard.offset_range(), shard.events_end()))
        }
        Request::SettledTotals { reply } => {
            reply.send(shards.values().flat_map(|shard| shard.settled_totals()).collect())
        }
        Request::Stats { reply } => reply.send(shards.iter().map(|(id, shard)| (*id, shard.stats())).collect()),
        Request::Sleep { duration, reply } => {
            glommio::spawn_local(async move {
                glommio::timer::sleep(duration).await;
                reply.send(());
            })
            .detach();
        }
    }
}
