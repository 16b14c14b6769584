//! tradeshard's embedded engine: open a data directory, get an [`EngineHandle`], create and
//! change trades, read them back.
//!
//! ```no_run
//! use tradeshard_engine::{Engine, NewTrade, Options};
//!
//! let engine = Engine::open(Options::new("/var/lib/trades"))?;
//! let handle = engine.handle();
//! let receipt = handle.create_trade_blocking(NewTrade {
//!     buyer_id: 42,
//!     merchant_id: 7,
//!     merchant_order_no: "ORDER-1".into(),
//!     amount: 1999,
//!     currency: "CNY".into(),
//!     memo: String::new(),
//! })?;
//! handle.pay_blocking(receipt.id)?;
//! engine.close()?;
//! # Ok::<(), tradeshard_engine::Error>(())
//! ```
//!
//! The engine owns the executors (one per core, pinned), the routing of users and trade ids
//! to shards, and the data directory (manifest and lock). It knows nothing of the bytes of the
//! log.

mod accounts;
mod activities;
mod blocking;
mod checkers;
mod claim_ops;
mod consumer;
mod error;
mod executor;
mod groups;
mod handle;
mod inbox;
mod kick;
mod local;
mod manifest;
mod message_ops;
mod messages;
mod ops;
mod options;
mod orders;
mod outbox;
mod participants;
mod partitions;
mod routing;
mod stall_report;
mod trade_payments;
mod transfer_batch;
mod transfers;

use tradeshard_shard::TradeCache;

pub use checkers::{CheckAnswer, CheckFuture, MessageChecker, MessageCheckers};
pub use consumer::{Consumer, ConsumerConfig, ConsumerMode, StartPosition, POLL_EVENTS_MAX};
pub use error::{Error, FullQueue, Result};
pub use handle::{EngineHandle, EngineStats};
pub use kick::kicks_in_process;
pub use manifest::{Manifest, FORMAT_VERSION};
pub use messages::{DeadLetter, HalfMessage, MessageId, OutgoingMessage, Producer, Published};
pub use options::{cores, Backpressure, Durability, Options, SyncMethod, Upkeep};
pub use participants::{BranchCall, Participant, ParticipantFuture, Participants};
pub use partitions::PartitionPosition;
pub use routing::Routing;
pub use stall_report::describe_threads;
pub use tradeshard_shard::{
    quantile_bucket, AccountOp, AccountReceipt, ActivityEntry, ActivityState, Balance, BranchAction, BranchPlan,
    BranchPlans, CacheStats, CancelReason, CheckpointStats, CreatedFields, CreatedFieldsView, Currency, DeadEntry,
    Decision, EndedActivity, Event, EventBatch, EventView, FoundActivity, Funding, HalfEntry, InputError, Message,
    MessageBody, MessageOutcome, MessagePolicy, MessageView, NewTrade, OpenReport, PollQuery, Receipt, RecordKind,
    Refusal, RollbackReason, ShardStats, Subscription, Trade, TradeId, TradeRecord, TradeRecordView, TradeStatus,
    TurnTimes, WalStats, AMOUNT_MAX, BALANCE_MAX, DELAY_MAX, HEADERS_MAX, HEADER_BYTES_MAX, HISTOGRAM_BUCKETS,
    KEY_BYTES_MAX, LOGICAL_SHARDS_MAX, MEMO_BYTES_MAX, ORDER_NO_BYTES_MAX, PAYLOAD_BYTES_MAX, POLL_BYTES_MAX,
    REFUND_NO_BYTES_MAX, REQUEST_NO_BYTES_MAX, TOPIC_BYTES_MAX, TRADES_TOPIC,
};
pub use tradeshard_shard::{reply, validate_group, validate_topic};
pub use transfer_batch::{TransferRequest, TRANSFERS_PER_CALL_MAX};
pub use transfers::{ActivityOutcome, TransferReceipt};

/// The share of `Options::cache_bytes` kept for order numbers found by `get_by_order` (one
/// part in this many); the rest goes to the shards' caches of trades.
const ORDER_IDS_SHARE: usize = 32;
/// The bounds of `Options::preempt_interval`: below the first an executor would spend its
/// time on its timer; above the second requests would wait that long behind background work.
const PREEMPT_INTERVAL_MIN: std::time::Duration = std::time::Duration::from_micros(100);
const PREEMPT_INTERVAL_MAX: std::time::Duration = std::time::Duration::from_secs(1);

use crate::executor::ExecutorPlan;
use crate::handle::HandleInner;
use crate::inbox::Inbox;
use crate::manifest::DataDir;

/// An open engine. Close it with [`Engine::close`]; dropping it also closes it (errors are
/// then lost, data is not: nothing acknowledged depends on closing).
pub struct Engine {
    handle: EngineHandle,
    executors: Vec<std::thread::JoinHandle<Result<()>>>,
    data_dir: DataDir,
    activities: Option<activities::ActivityRecovery>,
    /// Wakes an executor the kernel left asleep (`kick.rs`), from before the open to the close.
    kicker: kick::Kicker,
}

impl Engine {
    /// Opens (or creates) the data directory in `options` and starts the executors, each
    /// replaying its shards' logs before this returns.
    pub fn open(options: Options) -> Result<Engine> {
        let logical_shards = options.logical_shards;
        if logical_shards == 0 || logical_shards > LOGICAL_SHARDS_MAX {
            return Err(Error::InvalidOptions(format!("logical_shards {logical_shards} is not in 1..=65536")));
        }
        let physical_shards = options.physical_shards.unwrap_or(cores() as u32);
        if physical_shards == 0 || physical_shards > logical_shards {
            return Err(Error::InvalidOptions(format!(
                "physical_shards {physical_shards} is not in 1..=logical_shards"
            )));
        }
        if options.activity_timeout.is_zero()
            || options.activity_recovery_interval.is_zero()
            || options.participant_timeout.is_zero()
        {
            return Err(Error::InvalidOptions(
                "activity_timeout, activity_recovery_interval and participant_timeout must be above zero".into(),
            ));
        }
        if !(PREEMPT_INTERVAL_MIN..=PREEMPT_INTERVAL_MAX).contains(&options.preempt_interval) {
            return Err(Error::InvalidOptions(format!(
                "preempt_interval {:?} is not within {PREEMPT_INTERVAL_MIN:?}..={PREEMPT_INTERVAL_MAX:?}",
                options.preempt_interval
            )));
        }
        if options.queue_depth_max == 0 || options.executors == Some(0) {
            return Err(Error::InvalidOptions("queue_depth_max and executors must be above zero".into()));
        }
        let upkeep = &options.upkeep;
        if upkeep.checkpoint_log_bytes == 0
            || upkeep.checkpoint_interval.is_zero()
            || upkeep.checkpoint_memory_bytes == 0
        {
            return Err(Error::InvalidOptions(
                "checkpoint_log_bytes, checkpoint_interval and checkpoint_memory_bytes must be above zero".into(),
            ));
        }
        let new_layout = Manifest {
            format_version: FORMAT_VERSION,
            logical_shards,
            physical_shards,
            created_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
        };
        let data_dir = DataDir::open(&options.dir, new_layout)?;
        let manifest = data_dir.manifest;
        let executors = options.executors.unwrap_or(cores()).min(manifest.physical_shards as usize).max(1);
        let routing =
            Routing { logical_shards: manifest.logical_shards, physical_shards: manifest.physical_shards, executors };
        let inboxes: Vec<_> =
            (0..executors).map(|_| std::sync::Arc::new(Inbox::new(options.queue_depth_max))).collect();
        let beats: Vec<std::sync::Arc<kick::Beat>> = (0..executors).map(|_| Default::default()).collect();
        // An order number names one trade forever, so a cached one is never stale; with a key
        // window it may name a newer trade once the window has passed, and none is cached.
        let order_ids_bytes = match options.upkeep.key_window {
            None => options.cache_bytes / ORDER_IDS_SHARE,
            Some(_) => 0,
        };
        let cache_bytes_per_shard = (options.cache_bytes - order_ids_bytes) / manifest.physical_shards as usize;
        let trade_caches: Vec<_> = (0..manifest.physical_shards)
            .map(|_| std::sync::Arc::new(TradeCache::with_hasher(cache_bytes_per_shard)))
            .collect();
        let handle = EngineHandle {
            inner: std::sync::Arc::new(HandleInner {
                routing,
                inboxes: inboxes.clone(),
                trade_caches: trade_caches.clone(),
                order_ids: tradeshard_shard::SharedCache::new(order_ids_bytes),
                backpressure: options.backpressure,
                groups: groups::Groups::default(),
                activity_timeout: options.activity_timeout,
                participants: options.participants.clone(),
                participant_timeout: options.participant_timeout,
                key_window: options.upkeep.key_window,
                checkers: options.checkers.clone(),
                half_checks: checkers::HalfChecks {
                    delay: options.half_check_delay,
                    interval: options.half_check_interval,
                    max: options.half_checks_max,
                },
                next_partition: Default::default(),
                beats: beats.clone(),
                driving: Default::default(),
            }),
        };
        let kicker = kick::Kicker::start(beats.clone());
        let mut engine = Engine { handle, executors: Vec::new(), data_dir, activities: None, kicker };
        // Two phases, so that a refused open changes no shard: every executor recovers its
        // shards (in parallel, reading only); only if all succeed do they repair and start them.
        let mut starting = Vec::new();
        let mut refusal = None;
        for (index, beat) in beats.iter().enumerate() {
            let shard_dirs = routing
                .shards_of_executor(index)
                .map(|s| (s, engine.data_dir.shard_dir(s), trade_caches[s as usize].clone()))
                .collect();
            let beat = beat.clone();
            let plan = ExecutorPlan { index, shard_dirs, inboxes: inboxes.clone(), routing, beat };
            match executor::start(plan, &options) {
                Ok(executor) => starting.push(executor),
                Err(error) => {
                    refusal = Some(error);
                    break;
                }
            }
        }
        for executor in &starting {
            if let Err(error) = executor.recovered() {
                refusal.get_or_insert(error);
            }
        }
        let go = refusal.is_none();
        for executor in starting {
            match executor.finish(go) {
                Ok(running) => engine.executors.extend(running),
                Err(error) => {
                    refusal.get_or_insert(error);
                }
            }
        }
        if let Some(error) = refusal {
            // Dropping the engine closes and joins the executors that did start.
            return Err(error);
        }
        if options.read_only {
            // Nothing can be written: the work a stop interrupted stays as found, to be seen.
            return Ok(engine);
        }
        // Before any request is taken: creates across shards that a stop interrupted end with
        // exactly one trade or none, and no durable trade's order number looks free
        // (`orders.rs`).
        futures_lite::future::block_on(async {
            engine.handle.claim_trades_in_doubt().await?;
            engine.handle.resolve_pending_claims().await
        })?;
        // Activities decided before a stop are carried out; undecided ones are cancelled once
        // past their deadline (`activities.rs`).
        let recovery = activities::ActivityRecovery::start(engine.handle.clone(), options.activity_recovery_interval)?;
        engine.activities = Some(recovery);
        Ok(engine)
    }

    /// A handle for requests; clone it freely, use it from any thread.
    pub fn handle(&self) -> EngineHandle {
        self.handle.clone()
    }

    /// The layout fixed when the data directory was created.
    pub fn manifest(&self) -> Manifest {
        self.data_dir.manifest
    }

    /// Finishes every request already queued, syncs and closes every shard, stops the
    /// executors and releases the directory. Requests made after this fail with `Closed`.
    pub fn close(mut self) -> Result<()> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<()> {
        if let Some(mut recovery) = self.activities.take() {
            recovery.stop();
        }
        for inbox in &self.handle.inner.inboxes {
            inbox.close();
        }
        let mut first_error = None;
        for (index, executor) in self.executors.drain(..).enumerate() {
            if let Err(error) = executor::join(index, executor) {
                first_error.get_or_insert(error);
            }
        }
        self.kicker.stop();
        // Handles outlive the engine; what their caches hold goes with it.
        for cache in &self.handle.inner.trade_caches {
            cache.clear();
        }
        self.handle.inner.order_ids.clear();
        first_error.map_or(Ok(()), Err)
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}
