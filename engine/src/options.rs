//! How an engine is opened: the data directory, its fixed layout (on creation), executors,
//! durability and limits.

use std::path::PathBuf;
use std::time::Duration;

pub use tradeshard_shard::{Durability, SyncMethod, Upkeep};

/// What a caller wants when an executor's request queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backpressure {
    /// Wait until the queue has room (async callers yield, blocking callers park).
    Wait,
    /// Fail at once with `Error::Backpressure`.
    Fail,
}

/// Options of `Engine::open`.
#[derive(Debug, Clone)]
pub struct Options {
    /// The data directory; created (mode 0700) if absent.
    pub dir: PathBuf,
    /// Logical shards, fixed when the directory is created (a user's shard is
    /// `xxh3_64(user) % logical_shards`). Ignored when opening an existing directory.
    pub logical_shards: u32,
    /// Physical shards (one log each), fixed when the directory is created; `None` means one
    /// per core. Ignored when opening an existing directory.
    pub physical_shards: Option<u32>,
    /// Executor threads, each pinned to a core and owning physical shards `shard % executors`;
    /// `None` means one per core (at most one per physical shard).
    pub executors: Option<usize>,
    /// Pin executor `i` to CPU `i % cores`.
    pub pin: bool,
    /// What a write's acknowledgement promises.
    pub durability: Durability,
    /// How the logs make a write durable: `O_DSYNC` writes (one device operation per group
    /// commit, the default: faster on the measured disk, `BENCHMARKS.md`) or a write and then
    /// an fdatasync.
    pub sync_method: SyncMethod,
    /// Requests waiting in one executor's queue.
    pub queue_depth_max: usize,
    /// What to do when that queue is full.
    pub backpressure: Backpressure,
    /// Bytes of each shard log's segments.
    pub segment_bytes: u64,
    /// glommio io_memory per executor (registered buffers for the logs' writes).
    pub io_memory_bytes: usize,
    /// How long an executor runs ready tasks before it looks at its ring again (completed
    /// writes, timers): glommio's preemption timer. While a checkpoint's work is ready to run
    /// the ring waits this long, and so do the acknowledgements of completed writes; glommio's
    /// default of 100 ms held requests for a tenth of a second at every checkpoint.
    pub preempt_interval: Duration,
    /// Bytes of read-through cache in all: a thirty-second for order numbers found by
    /// `get_by_order`, the rest split evenly across the physical shards' caches of trades; 0
    /// turns caching off (every `get` reads the log).
    pub cache_bytes: usize,
    /// Checkpoints (how often each shard makes its state durable, so that an open replays
    /// only the log after it), retention (which log segments go) and the memory for each
    /// shard's trades (past it, trades leave memory for the shard's table on disk).
    pub upkeep: Upkeep,
    /// How long a flexible transaction (a transfer across shards) may stay undecided: past
    /// it, recovery cancels it (its initiator stopped).
    pub activity_timeout: Duration,
    /// How often recovery looks for activities not completed (it also looks once when the
    /// engine opens).
    pub activity_recovery_interval: Duration,
    /// The embedder's services that activities can name as branches
    /// (`EngineHandle::run_activity`), by id.
    pub participants: crate::participants::Participants,
    /// How long a call to a participant (or to a checker of half messages) may take before
    /// it counts as failed.
    pub participant_timeout: Duration,
    /// The embedder's checkers of half messages, by topic (`MessageChecker`).
    pub checkers: crate::checkers::MessageCheckers,
    /// A half message left unresolved is checked first this long after its prepare...
    pub half_check_delay: Duration,
    /// ... then at this interval...
    pub half_check_interval: Duration,
    /// ... at most this many times, then rolled back (RocketMQ's defaults: 6 s, 60 s, 15).
    pub half_checks_max: u8,
    /// Open to look, not to change: every write is refused (`Refusal::ReadOnly`), no
    /// checkpoint is taken and no segment removed (at close neither), and the work a stop
    /// interrupted is left as found (creates in doubt, activities not completed), so that it
    /// can be seen. The open still repairs the log as every open does (a torn tail cut, a
    /// preparation of the next segment restarted), and a shard never checkpointed gets its
    /// empty table files. Reads, listings, polls and stats work.
    pub read_only: bool,
}

impl Options {
    /// Defaults for a data directory at `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Options {
        Options {
            dir: dir.into(),
            logical_shards: 1024,
            physical_shards: None,
            executors: None,
            pin: true,
            durability: Durability::Sync,
            sync_method: SyncMethod::DsyncWrites,
            queue_depth_max: 65_536,
            backpressure: Backpressure::Wait,
            segment_bytes: 128 << 20,
            io_memory_bytes: 64 << 20,
            preempt_interval: Duration::from_millis(5),
            cache_bytes: 256 << 20,
            upkeep: Upkeep::default(),
            activity_timeout: Duration::from_secs(10),
            activity_recovery_interval: Duration::from_secs(1),
            participants: Default::default(),
            participant_timeout: Duration::from_secs(5),
            checkers: Default::default(),
            half_check_delay: Duration::from_secs(6),
            half_check_interval: Duration::from_secs(60),
            half_checks_max: 15,
            read_only: false,
        }
    }

    /// `Durability::Buffered` with this sync interval.
    pub fn buffered(mut self, sync_interval: Duration) -> Options {
        self.durability = Durability::Buffered { sync_interval };
        self
    }
}

/// Cores available to this process.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
