//! One shard of the trade store: the trade and its lifecycle, the records that are at once the
//! log and the settlement events, the in-memory indexes rebuilt from them, and the path of a
//! request through one shard's log.
//!
//! A shard lives on one executor and knows nothing of threads, routing or other shards.

mod committer;
pub mod currency;
pub mod error;
pub mod events;
pub mod index;
mod partitioned;
pub mod record;
pub mod shard;
pub mod trade;
mod trade_table;

pub use currency::Currency;
pub use error::TradeError;
pub use events::{Event, EventBatch, PollQuery, RawEventBatch};
pub use index::Action;
pub use record::{CreatedView, LogRecord, OffsetCommit, RecordKind, TradeRecord, TradeRecordView};
pub use shard::{Command, CreatedPart, Done, ListQuery, RecoveredShard, Shard, ShardStats};
pub use trade::{NewTrade, Receipt, Trade, TradeId, TradeStatus, ValidTrade};
pub use tradeshard_cache::CacheStats;
