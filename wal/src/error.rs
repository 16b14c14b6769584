//! The one error type of the log.
//!
//! Callers act on the class of a failure, so the variants are split by what can be done about
//! them: `Backpressure` is retryable at once, `DiskFull` after space is freed and the log is
//! reopened, `Poisoned` only by reopening, and `Corruption` only by a person. Every variant that
//! concerns a file names it. The type is `Clone` because one failed flush is reported to every
//! appender that waited on it.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

/// Result alias for the log.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the write-ahead log.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The records waiting for a flush are at their limit; retry once a flush completes.
    #[error("write-ahead log is full: {records} records / {bytes} bytes are waiting to be flushed")]
    Backpressure { records: usize, bytes: usize },

    /// A record is larger than `WalConfig::record_bytes_max`; it was not appended.
    #[error("record of {len} bytes exceeds the limit of {max} bytes")]
    RecordTooLarge { len: usize, max: usize },

    /// The configuration breaks one of its own limits; nothing was opened.
    #[error("invalid write-ahead log configuration: {0}")]
    InvalidConfig(String),

    /// The device is out of space; nothing of the failed flush was acknowledged and the log is
    /// poisoned until reopened.
    #[error("no space left writing {path}: {source}")]
    DiskFull { path: PathBuf, source: Arc<io::Error> },

    /// An I/O call failed; if it was a write or a sync the log is poisoned until reopened.
    #[error("{op} failed on {path}: {source}")]
    Io { op: &'static str, path: PathBuf, source: Arc<io::Error> },

    /// An earlier write or fdatasync failed, so this log acknowledges nothing more; reopen it.
    #[error("write-ahead log is poisoned by an earlier failure ({cause}); reopen it")]
    Poisoned { cause: Arc<Error> },

    /// Bytes on disk fail their checks somewhere recovery may not truncate; nothing was dropped.
    #[error("corrupt log: {path} at offset {offset}: {reason}")]
    Corruption { path: PathBuf, offset: u64, reason: &'static str },

    /// A file was written by a format version this build does not read.
    #[error("{path} has format version {found}, this build reads version {supported}")]
    UnsupportedVersion { path: PathBuf, found: u16, supported: u16 },

    /// A segment belongs to another log (its shard id differs from the configured one).
    #[error("{path} belongs to shard {found}, expected shard {expected}")]
    ForeignSegment { path: PathBuf, found: u32, expected: u32 },

    /// The sequence number is not (yet, or any more) readable: it is at or beyond the durable
    /// end, or below the first retained record.
    #[error("sequence number {seq} is outside the readable range {first}..{end}")]
    OutOfRange { seq: u64, first: u64, end: u64 },

    /// The log was closed; nothing more is accepted.
    #[error("write-ahead log is closed")]
    Closed,
}

impl Error {
    /// Wraps an I/O failure, telling a full device apart from other failures.
    pub fn io(op: &'static str, path: PathBuf, source: io::Error) -> Self {
        if source.kind() == io::ErrorKind::StorageFull || source.raw_os_error() == Some(28) {
            Error::DiskFull { path, source: Arc::new(source) }
        } else {
            Error::Io { op, path, source: Arc::new(source) }
        }
    }

    /// True for conditions a caller may retry without reopening the log.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Backpressure { .. })
    }
}
