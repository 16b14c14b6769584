//! Why a shard operation was refused or failed, split by what a caller can do about it.
//!
//! Bad input ([`InputError`]) and refusals by the trade's state ([`Refusal`]) are decided
//! before anything reaches the log and leave no trace; `Log` is the shard's log refusing
//! (backpressure) or failing, after which the shard acknowledges nothing more; `BadRecord` is a
//! log holding bytes this build cannot apply.

use crate::currency::Currency;
use crate::tcc::CancelReason;
use crate::trade::{TradeId, TradeStatus};

/// The log's error, named here so that the shard's users need not depend on the log.
pub use tradeshard_wal::Error as LogError;

/// Everything a shard can answer instead of doing the operation.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum TradeError {
    /// The input was refused before anything was queued (see [`InputError`]).
    #[error(transparent)]
    Invalid(#[from] InputError),
    /// No trade has this id.
    #[error("no trade {0}")]
    NotFound(TradeId),
    /// The state of the trade or of the log does not allow the operation (see [`Refusal`]).
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// The shard's log refused (backpressure) or failed (full disk, failed sync, corruption).
    #[error("shard log: {0}")]
    Log(#[from] LogError),
    /// A record in the log does not decode: the log holds bytes this build does not understand.
    #[error("undecodable record at seq {seq}: {reason}")]
    BadRecord { seq: u64, reason: &'static str },
}

/// Input that no state of the store could accept; nothing was queued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InputError {
    /// The buyer (user) id is zero.
    #[error("user id must not be zero")]
    ZeroUserId,
    /// The merchant id is zero.
    #[error("merchant id must not be zero")]
    ZeroMerchantId,
    /// The amount is zero.
    #[error("amount must be above zero")]
    ZeroAmount,
    /// The amount is above the limit of one trade.
    #[error("amount {amount} is above the limit of {max} minor units")]
    AmountTooLarge { amount: u64, max: u64 },
    /// The currency is not an active ISO 4217 code.
    #[error("'{0}' is not an ISO 4217 currency code")]
    UnknownCurrency(String),
    /// The merchant order number is empty, too long, or not printable ASCII.
    #[error("merchant order number of {len} bytes must be 1..={max} printable ASCII bytes")]
    BadOrderNo { len: usize, max: usize },
    /// The memo is longer than allowed.
    #[error("memo of {len} bytes is above the limit of {max}")]
    MemoTooLong { len: usize, max: usize },
    /// The trade id is zero or names a logical shard the directory does not have.
    #[error("trade id {id:#x} is not valid for {logical_shards} logical shards")]
    BadTradeId { id: u64, logical_shards: u32 },
    /// The refund request number is empty, too long, or not printable ASCII.
    #[error("refund request number of {len} bytes must be 1..={max} printable ASCII bytes")]
    BadRefundNo { len: usize, max: usize },
    /// The account request number is empty, too long, or not printable ASCII.
    #[error("account request number of {len} bytes must be 1..={max} printable ASCII bytes")]
    BadRequestNo { len: usize, max: usize },
    /// A transfer names the same user on both sides.
    #[error("a transfer must name two different users")]
    SameAccount,
    /// An activity's account branches do not balance: per currency, what its Freeze branches
    /// take must equal what its Credit branches give.
    #[error("an activity's branches take {taken} and give {given} of {currency}")]
    UnbalancedActivity { currency: Currency, taken: u128, given: u128 },
    /// An activity names a participant no `Options::participants` registers.
    #[error("no participant is registered under id {participant}")]
    UnknownParticipant { participant: u16 },
    /// A local transaction of no steps or of more than `STEPS_MAX`, an activity of no
    /// branches or of more than `BRANCHES_MAX`, or a step whose fields no check would pass (a
    /// user zero, an amount out of bounds).
    #[error("a local transaction holds 1..={max} steps (an activity 1..=8 branches) of valid fields, not {count}")]
    BadSteps { count: usize, max: usize },
    /// A consumer group name is empty, too long, or not printable ASCII.
    #[error("consumer group name of {len} bytes must be 1..=64 printable ASCII bytes")]
    BadGroup { len: usize },
    /// A topic name is empty, too long, or not printable ASCII.
    #[error("topic name of {len} bytes must be 1..=64 printable ASCII bytes")]
    BadTopic { len: usize },
    /// Messages cannot be published to the topic of trade events.
    #[error("the topic 'trades' holds trade events only")]
    ReservedTopic,
    /// A message key longer than allowed.
    #[error("message key of {len} bytes is above the limit of {max}")]
    KeyTooLong { len: usize, max: usize },
    /// A message payload larger than allowed.
    #[error("message payload of {len} bytes is above the limit of {max}")]
    PayloadTooLarge { len: usize, max: usize },
    /// Too many headers, too many header bytes, or a header with an empty name.
    #[error("{count} headers of {bytes} bytes: at most 16 of non-empty names and 4096 bytes")]
    BadHeaders { count: usize, bytes: usize },
    /// A delayed publish due further ahead than allowed.
    #[error("a message may be delayed at most {max_ms} ms")]
    DelayTooLong { max_ms: u64 },
    /// A producer's sequence number of `u64::MAX` (which marks no sequence), or one of 2^63 or
    /// more given to the engine (the top bit marks a Kafka producer's wrapping numbers).
    #[error("a producer's sequence number must be below 2^63")]
    BadSequence,
    /// A consumer subscribed to no topic.
    #[error("a consumer reads at least one topic")]
    NoTopics,
    /// A message id naming a partition the engine does not have.
    #[error("partition {partition} is not one of the {partitions} partitions")]
    BadPartition { partition: u32, partitions: u32 },
    /// A batch of more requests than one call takes.
    #[error("a batch holds at most {max} requests, not {count}")]
    BadBatch { count: usize, max: usize },
    /// A consumer subscribed to application topics polled for trade events only.
    #[error("this consumer subscribes to application topics: poll it with poll_messages")]
    NotTradeEvents,
}

/// A well-formed request that the current state does not allow; nothing was written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// The trade's status does not allow the operation.
    #[error("trade {id} is {from:?}: cannot {action}")]
    IllegalTransition { id: TradeId, from: TradeStatus, action: &'static str },
    /// The refund would take the refunded total above what was paid.
    #[error("refund of {requested} on trade {id} exceeds the {refundable} still refundable")]
    RefundExceedsPaid { id: TradeId, requested: u64, refundable: u64 },
    /// The merchant order number is taken by a trade with a different body (`existing`; `None`
    /// while the create that took it has not finished).
    #[error("merchant {merchant_id} order '{order_no}' is taken by another create ({existing:?})")]
    IdempotencyConflict { existing: Option<TradeId>, merchant_id: u64, order_no: String },
    /// The refund request number was used already, for another trade or another amount.
    #[error("refund request '{refund_no}' already refunded {amount} of trade {existing}")]
    RefundRequestConflict { refund_no: String, existing: TradeId, amount: u64 },
    /// An offset to commit or to read from lies outside the log's readable range.
    #[error("offset {offset} is outside the readable range {first}..={end}")]
    OffsetOutOfRange { offset: u64, first: u64, end: u64 },
    /// A consumer asked about a partition its group did not assign it.
    #[error("partition {partition} is not assigned to this consumer")]
    NotAssigned { partition: u32 },
    /// A consumer's commit of offsets it read before its group changed (a member joined or
    /// left): another member may have read and committed further since. Poll again, and
    /// commit what that poll delivers (Kafka's `ILLEGAL_GENERATION`).
    #[error("the group changed since these offsets were read (generation {read} is now {current})")]
    StaleGeneration { read: u64, current: u64 },
    /// The account has less available than the request takes.
    #[error("user {user_id} has {available} {currency} available: cannot take {requested}")]
    InsufficientFunds { user_id: u64, currency: Currency, available: u64, requested: u64 },
    /// The account would hold more than the most a balance may hold.
    #[error("user {user_id} holds {balance} {currency}: {amount} more passes the limit of {max}")]
    BalanceLimit { user_id: u64, currency: Currency, balance: u64, amount: u64, max: u64 },
    /// The account request number was used already, for another operation or amount.
    #[error("account request '{request_no}' was already a {op} of {amount}")]
    AccountRequestConflict { request_no: String, op: &'static str, amount: u64 },
    /// A step of a flexible transaction that the activity's or branch's record forbids (an
    /// activity begun twice with other branches, completed before its decision; a branch
    /// tried twice with other actions).
    #[error("activity {activity:#x}: {reason}")]
    StepConflict { activity: u128, reason: &'static str },
    /// A Try or Confirm of a branch that was cancelled (or fenced by a Cancel that came
    /// before its Try).
    #[error("branch {branch} of activity {activity:#x} was cancelled")]
    BranchCancelled { activity: u128, branch: u16 },
    /// A Cancel of a branch that was confirmed.
    #[error("branch {branch} of activity {activity:#x} was confirmed")]
    BranchConfirmed { activity: u128, branch: u16 },
    /// A Confirm of a branch with no Try.
    #[error("branch {branch} of activity {activity:#x} was never tried")]
    BranchNotTried { activity: u128, branch: u16 },
    /// A Decide (or a Complete) of an activity whose decision in force is the other one.
    #[error("activity {activity:#x} was decided otherwise: {decision:?}")]
    DecidedOtherwise { activity: u128, decision: crate::tcc::Decision },
    /// The transfer's activity was cancelled, and nothing moved.
    #[error("transfer cancelled ({reason:?}); activity {activity:#x}")]
    TransferCancelled { activity: u128, reason: CancelReason },
    /// A producer's sequence number older than the window the shard remembers: whether it was
    /// stored can no longer be told (a producer keeps its messages in flight to one partition
    /// within `PRODUCER_WINDOW`).
    #[error("producer {producer:#x} sequence {sequence} is older than the shard's window")]
    StaleSequence { producer: u64, sequence: u64 },
    /// No half message, scheduled message or dead letter is at this offset (or its answer
    /// is older than the answers kept).
    #[error("no message to act on at offset {offset}")]
    UnknownMessage { offset: u64 },
    /// A half message resolved, or a dead letter ended, the other way (or a check of a half
    /// message already resolved).
    #[error("the message at offset {offset} was {outcome}")]
    Resolved { offset: u64, outcome: &'static str },
    /// A nack of a delivery so old that whether the group already nacked it can no longer be
    /// told (its answer was among the oldest let go): refused rather than risk a second retry.
    #[error("whether group '{group}' already nacked offset {offset} can no longer be told")]
    NackTooOld { offset: u64, group: String },
    /// A nack of an offset that holds no message delivered to the group.
    #[error("offset {offset} holds no message delivered to group '{group}'")]
    NotDelivered { offset: u64, group: String },
    /// The shard holds the most message bodies (half, scheduled, dead) its policy allows.
    #[error("the shard holds {held} bytes of half, scheduled and dead messages; the most is {max}")]
    MessagesFull { held: usize, max: usize },
    /// The shard issued every id its counter can hold.
    #[error("trade id counter exhausted")]
    CounterExhausted,
    /// The shard was opened to be looked at, not changed ([`Shard::refuse_writes`]).
    ///
    /// [`Shard::refuse_writes`]: crate::Shard::refuse_writes
    #[error("the shard is open read-only: nothing is written")]
    ReadOnly,
}
