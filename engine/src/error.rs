//! The engine's error: one flat enum, so that one `match` tells what a caller can do.
//!
//! - retry as it is: `Backpressure`;
//! - fix the request: `Invalid` (bad input), `NotFound`, `Refused` (the state does not allow it);
//! - free space and reopen: `DiskFull`; reopen: `Poisoned` (a write or sync failed, the shard
//!   acknowledges nothing more); a person: `Corrupt`, `BadRecord`;
//! - the engine's own: `Closed`, `Locked`, the manifest, options and executors, `Io`.
//!
//! The shard's and the log's errors are flattened into these variants here, in one place;
//! I/O failures keep their `std::io::Error` (its kind included) as their source.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use tradeshard_shard::{InputError, LogError, Refusal, TradeError, TradeId};

/// Everything the engine can answer instead of doing what was asked.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The input was refused before anything was queued; nothing was written.
    #[error(transparent)]
    Invalid(#[from] InputError),
    /// No trade has this id.
    #[error("no trade {0}")]
    NotFound(TradeId),
    /// No trade has this merchant order number.
    #[error("no trade of merchant {merchant_id} has order number '{order_no}'")]
    OrderNotFound { merchant_id: u64, order_no: String },
    /// The state of the trade, the log or the consumer does not allow the operation; nothing
    /// was written.
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// A queue is full and the caller chose not to wait; retry later.
    #[error("{queue} is full")]
    Backpressure { queue: FullQueue },
    /// The engine is closed or closing.
    #[error("the engine is closed")]
    Closed,
    /// The device is out of space: the write in flight was not acknowledged and its shard
    /// acknowledges nothing more until space is freed and the engine reopened.
    #[error("no space left writing {path}: {source}")]
    DiskFull { path: PathBuf, source: Arc<io::Error> },
    /// An earlier write or sync of this shard failed, so it acknowledges nothing more until the
    /// engine is reopened; `cause` is that failure.
    #[error("shard is poisoned by an earlier failure ({cause}); reopen the engine")]
    Poisoned { cause: Arc<Error> },
    /// Bytes on disk fail their checks where recovery may not truncate; nothing was dropped.
    #[error("corrupt log: {path} at offset {offset}: {reason}")]
    Corrupt { path: PathBuf, offset: u64, reason: &'static str },
    /// A record of a shard's log does not decode or does not apply: the log holds bytes this
    /// build does not understand.
    #[error("undecodable record at seq {seq}: {reason}")]
    BadRecord { seq: u64, reason: &'static str },
    /// A segment belongs to another shard's log.
    #[error("{path} belongs to shard {found}, expected shard {expected}")]
    ForeignSegment { path: PathBuf, found: u32, expected: u32 },
    /// An operation on a file or directory failed.
    #[error("{op} {path}: {source}")]
    Io { op: &'static str, path: PathBuf, source: Arc<io::Error> },
    /// Another process (or another engine in this one) has the data directory open.
    #[error("data directory {path} is locked by another open engine")]
    Locked { path: PathBuf },
    /// A file was written by a format version this build does not read.
    #[error("{path} has format version {found}; this build reads version {supported}")]
    UnsupportedVersion { path: PathBuf, found: u32, supported: u32 },
    /// The manifest is missing fields, truncated or otherwise not readable.
    #[error("manifest {path} is not valid: {reason}")]
    BadManifest { path: PathBuf, reason: String },
    /// The options contradict each other or the data directory.
    #[error("invalid options: {0}")]
    InvalidOptions(String),
    /// An executor thread could not be started, or stopped before it should.
    #[error("executor {executor}: {source}")]
    Executor { executor: usize, source: Arc<io::Error> },
    /// A failure of a kind this build does not classify (a lower crate newer than the engine).
    #[error("{0}")]
    Other(String),
    /// An embedder's participant of an activity failed, or none is registered under its id.
    #[error("participant {participant}: {message}")]
    Participant { participant: u16, message: String },
}

/// Which queue was full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FullQueue {
    /// The request queue of an executor (`Options::queue_depth_max`).
    Executor { executor: usize },
    /// The records waiting for a shard log's next flush.
    Log { records: usize, bytes: usize },
}

impl std::fmt::Display for FullQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FullQueue::Executor { executor } => write!(f, "request queue of executor {executor}"),
            FullQueue::Log { records, bytes } => {
                write!(f, "a shard log's flush queue ({records} records, {bytes} bytes waiting)")
            }
        }
    }
}

impl Error {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, error: io::Error) -> Error {
        Error::Io { op, path: path.into(), source: Arc::new(error) }
    }

    /// True for conditions a caller may retry as they are.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Backpressure { .. })
    }
}

impl From<TradeError> for Error {
    fn from(error: TradeError) -> Error {
        match error {
            TradeError::Invalid(input) => Error::Invalid(input),
            TradeError::NotFound(id) => Error::NotFound(id),
            TradeError::Refused(refusal) => Error::Refused(refusal),
            TradeError::Log(log) => log.into(),
            TradeError::BadRecord { seq, reason } => Error::BadRecord { seq, reason },
            other => Error::Other(other.to_string()),
        }
    }
}

impl From<LogError> for Error {
    fn from(error: LogError) -> Error {
        match error {
            LogError::Backpressure { records, bytes } => {
                Error::Backpressure { queue: FullQueue::Log { records, bytes } }
            }
            // Records are validated before they are encoded; one above the log's limit is a bug.
            LogError::RecordTooLarge { len, max } => {
                Error::Other(format!("a record of {len} bytes is above the log's limit of {max}"))
            }
            LogError::InvalidConfig(reason) => Error::InvalidOptions(reason),
            LogError::DiskFull { path, source } => Error::DiskFull { path, source },
            LogError::Io { op, path, source } => Error::Io { op, path, source },
            LogError::Poisoned { cause } => Error::Poisoned { cause: Arc::new((*cause).clone().into()) },
            LogError::Corruption { path, offset, reason } => Error::Corrupt { path, offset, reason },
            LogError::UnsupportedVersion { path, found, supported } => {
                Error::UnsupportedVersion { path, found: found.into(), supported: supported.into() }
            }
            LogError::ForeignSegment { path, found, expected } => Error::ForeignSegment { path, found, expected },
            LogError::OutOfRange { seq, first, end } => Refusal::OffsetOutOfRange { offset: seq, first, end }.into(),
            LogError::Closed => Error::Closed,
            other => Error::Other(other.to_string()),
        }
    }
}

/// Result alias of the engine.
pub type Result<T, E = Error> = std::result::Result<T, E>;
