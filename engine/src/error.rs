//! The engine's error type: what a caller of the embedded API can be told.
//!
//! `Trade` carries the shard's answer (bad input, unknown trade, illegal transition, a failed
//! log); the other variants are the engine's own: the data directory, the queues, shutdown.

use std::path::PathBuf;

pub use tradeshard_shard::TradeError;

/// Everything the engine can answer instead of doing what was asked.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The shard refused or failed the operation (see [`TradeError`]).
    #[error(transparent)]
    Trade(#[from] TradeError),
    /// The executor's request queue is full and the caller chose not to wait; retry later.
    #[error("request queue of executor {executor} is full")]
    Backpressure { executor: usize },
    /// The engine is closed or closing.
    #[error("the engine is closed")]
    Closed,
    /// Another process (or another engine in this one) has the data directory open.
    #[error("data directory {path} is locked by another open engine")]
    Locked { path: PathBuf },
    /// The data directory was made by a format version this build does not read.
    #[error("{path} has format version {found}; this build reads version {supported}")]
    UnsupportedVersion { path: PathBuf, found: u32, supported: u32 },
    /// The manifest is missing fields, truncated or otherwise not readable.
    #[error("manifest {path} is not valid: {reason}")]
    BadManifest { path: PathBuf, reason: String },
    /// The options contradict each other or the data directory.
    #[error("invalid options: {0}")]
    InvalidOptions(String),
    /// An operation on the data directory failed.
    #[error("{op} {path}: {message}")]
    Io { op: &'static str, path: PathBuf, message: String },
    /// A shard could not be opened (its log is corrupt, unreadable, or of another version).
    #[error("shard {shard} did not open: {source}")]
    ShardOpen { shard: u32, source: TradeError },
    /// An executor thread could not be started or stopped.
    #[error("executor {executor}: {message}")]
    Executor { executor: usize, message: String },
}

impl Error {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, error: std::io::Error) -> Error {
        Error::Io { op, path: path.into(), message: error.to_string() }
    }

    /// True for conditions a caller may retry as they are.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::Backpressure { .. } | Error::Trade(TradeError::Log(tradeshard_wal::Error::Backpressure { .. }))
        )
    }
}

/// Result alias of the engine.
pub type Result<T, E = Error> = std::result::Result<T, E>;
