//! One shard of the trade store: the trade and its lifecycle, the records that are at once the
//! log and the settlement events, the in-memory indexes rebuilt from them, and the path of a
//! request through one shard's log.
//!
//! A shard lives on one executor and knows nothing of threads, routing or other shards. Every
//! request is answered through a [`Reply`], the one one-shot that carries answers back to
//! whoever asked, on any thread.

mod account_write;
mod accounts;
mod bytes;
mod checkpoint;
mod checkpoint_runs;
mod checkpointer;
mod checkpoints;
mod claims;
mod cold;
mod columns;
mod command;
mod committer;
mod config;
mod created;
mod currency;
mod doubts;
mod entries;
mod error;
mod events;
mod files;
mod id_hash;
mod in_flight;
mod index;
mod join;
mod journal;
mod key_runs;
mod keys;
mod layered;
mod lifecycle;
mod message;
mod message_body;
mod message_book;
mod message_write;
mod partitioned;
mod parts;
mod prefetch;
mod read;
mod record;
mod replay;
pub mod reply;
mod retention;
mod routing;
mod run_merges;
mod run_values;
mod runs;
mod scheduler;
mod shard;
mod sort_room;
mod state;
mod system_record;
mod tcc;
mod tcc_aside;
mod tcc_batch;
mod tcc_book;
mod tcc_driver;
mod tcc_ended;
mod tcc_rules;
mod tcc_write;
mod trade;
mod trade_cache;
mod trade_file;
mod trade_money;
mod trade_table;
mod turns;
mod validate;
mod warm;
mod write;

pub use accounts::{AccountCommand, AccountReceipt, Balance, BALANCE_MAX};
/// The decoder of a checkpoint file, for fuzzing (`testing` feature).
#[cfg(any(test, feature = "testing"))]
pub use checkpoint::{decode_file as decode_checkpoint, sample_file as sample_checkpoint};
pub use checkpoints::{CheckpointStats, OpenReport};
pub use claims::{ClaimRequest, OrderLookup, PendingClaim, Reservation};
pub use command::Command;
pub use config::{DiskShard, ShardConfig};
pub use currency::Currency;
pub use doubts::ClaimState;
pub use error::{InputError, LogError, Refusal, TradeError};
pub use events::{Event, EventBatch, EventView, Message, PollQuery, Subscription, POLL_BYTES_MAX, POLL_EVENTS_MAX};
pub use id_hash::{IdHasher, IdMap};
pub use index::{body_hash, order_key};
/// Awaits futures together (the engine's check-backs run a pass's checks at once).
pub use join::join_all;
/// The codec of every record of a shard's log, for fuzzing and tests (`testing` feature).
#[cfg(any(test, feature = "testing"))]
pub use journal::JournalRecord;
pub use journal::{AccountOp, REQUEST_NO_BYTES_MAX};
pub use keys::{account_request_key, settlement_activity};
pub use lifecycle::Move;
pub use message::{
    validate_topic, MessageBody, MessageOp, MessageRecord, MessageView, RollbackReason, HEADERS_MAX, HEADER_BYTES_MAX,
    KEY_BYTES_MAX, PAYLOAD_BYTES_MAX, TOPIC_BYTES_MAX, TRADES_TOPIC,
};
pub use message_book::{
    DeadEntry, HalfEntry, MessageBook, MessageOutcome, MessagePolicy, MessageReceipt, ScheduledEntry, ANSWERS_KEPT,
    PRODUCERS_MAX, PRODUCER_WINDOW, RETRIES_MAX, SEQUENCE_WRAPS,
};
pub use message_write::{MessageCommand, DELAY_MAX};
pub use read::ListQuery;
pub use record::{CreatedFields, CreatedFieldsView, Funding, RecordKind, TradeRecord, TradeRecordView};
pub use reply::{Reply, ReplyFuture};
pub use retention::Upkeep;
pub use routing::UserRouting;
/// The reader of a run file, for fuzzing (`testing` feature).
#[cfg(any(test, feature = "testing"))]
pub use runs::{decode_for_fuzzing as decode_run_file, sample_for_fuzzing as sample_run_file};
pub use shard::{RecoveredShard, Shard, ShardStats};
pub use state::{ShardReply, TurnTimes};
pub use system_record::ClaimOutcome;
#[cfg(any(test, feature = "testing"))]
pub use system_record::{ClaimSettled, ClaimsKnown, LogRecord, OffsetCommit, OrderClaim};
pub use tcc::{
    BranchAction, BranchPlan, BranchPlans, CancelReason, Decision, Step, TccRecord, BRANCHES_MAX, NO_SHARD, STEPS_MAX,
};
pub use tcc_batch::{run_activities, BatchDriven, PlannedActivity};
pub use tcc_book::{ActivityEntry, ActivityState, BranchEntry, BranchState, StepAnswer, StepOutcome};
pub use tcc_driver::{finish_activity, run_activity, BranchCall, Driven, ManyAnswers, StepError, StepSender};
pub use tcc_ended::{plans_digest, EndedActivity, FoundActivity};
pub use trade::{
    NewTrade, Receipt, Trade, TradeId, TradeStatus, ValidTrade, AMOUNT_MAX, COUNTER_BITS, LOGICAL_SHARDS_MAX,
    LOGICAL_SHARD_BITS, MEMO_BYTES_MAX, ORDER_NO_BYTES_MAX, REFUND_NO_BYTES_MAX,
};
pub use trade_cache::{CachedTrade, TradeCache, TradeCopy};
/// The decoder of a record of the table of trades, for fuzzing (`testing` feature).
#[cfg(any(test, feature = "testing"))]
pub use trade_file::{
    decode_for_fuzzing as decode_trade_record, inline_sample_for_fuzzing as inline_sample_trade_record,
    sample_for_fuzzing as sample_trade_record,
};
/// The decoder of a frozen block of the table (its index entry and compressed copy), for
/// fuzzing (`testing` feature).
#[cfg(any(test, feature = "testing"))]
pub use trade_file::{
    decode_frozen_for_fuzzing as decode_frozen_block, sample_frozen_for_fuzzing as sample_frozen_block,
};
/// Where a trade's record lies in its shard's table, and its length (tests damage records).
pub use trade_file::{file_offset as trade_record_offset, RECORD_BYTES as TRADE_RECORD_BYTES};
pub use tradeshard_cache::{CacheStats, SharedCache};
pub use tradeshard_wal::{quantile_bucket, Durability, SegmentInfo, SyncMethod, WalStats, HISTOGRAM_BUCKETS};
pub use validate::{validate_amount, validate_group, validate_order_no, validate_refund_no, validate_request_no};
