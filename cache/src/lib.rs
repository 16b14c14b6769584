//! A single-threaded, byte-bounded, scan-resistant cache with read-through loading.
//!
//! - [`Cache`]: S3-FIFO eviction (Yang et al., SOSP 2023) over a byte budget, every entry
//!   charged its real size. New keys enter a small FIFO (a tenth of the budget); a key read
//!   again before it leaves is promoted to the main FIFO, others are dropped and remembered in
//!   a ghost list so that a quick return goes straight to main. The main FIFO gives each entry
//!   that was read a second pass (a CLOCK). One-hit wonders and scans therefore pass through
//!   the small queue without flushing the hot set, which plain LRU cannot do.
//! - [`SharedCache`]: stripes of `Cache`, each behind a lock, so that threads other than the
//!   owner read hits themselves.
//! - [`ReadThrough`]: `get_or_load` over a `SharedCache`, for the owner's tasks: concurrent
//!   misses on one key run one load and share its outcome; a failed load caches nothing and
//!   every waiter gets the error.
//!
//! It knows nothing of executors, disks or trades: one per shard, written on the shard's
//! thread, read on any. A budget of zero turns caching off (every read is a miss and loads).

mod fifo;
mod read_through;
mod shared;

pub use fifo::{Cache, CacheStats, ENTRY_OVERHEAD_BYTES};
pub use read_through::ReadThrough;
pub use shared::SharedCache;
