//! tradeshard's write-ahead log: the one log per shard that is at once the write-ahead log,
//! the store of record and the message queue.
//!
//! The log owns segment files, frame encoding, checksums, group commit, recovery and reads by
//! sequence number. It knows nothing of trades, shards or caches: records are opaque bytes.
//!
//! - [`Wal`]: open (recover), `enqueue`/`append` (group-committed), `read_at`, `reader`, `close`.
//! - [`disk`]: the storage traits and glommio direct I/O ([`disk::DmaDisk`]).
//! - On-disk layout: `docs/FORMAT.md`; design and invariants: `ARCHITECTURE.md`.
//!
//! Everything else is private. The `testing` feature (off by default; tests and fuzz targets
//! turn it on) adds what they reach inside for: the codecs in `testing`, the simulated disk
//! and its generator (`disk::SimDisk`, `disk::Fault`, `disk::SplitMix64`) and a few methods
//! only tests call.

mod commit;
mod config;
mod cursor;
mod defect;
pub mod disk;
mod error;
mod frame;
mod layout;
mod piece;
mod reader;
mod recent;
mod record;
mod recovery;
mod recycle;
mod roll;
mod segment;
mod state;
#[cfg(feature = "testing")]
pub mod testing;
mod wal;
mod writer;

pub use commit::{Appended, PiecePos, Ticket};
pub use config::{Compression, Durability, Preallocation, WalConfig};
pub use disk::SyncMethod;
pub use error::{Error, Result};
pub use layout::BLOCK_BYTES;
pub use reader::LogReader;
pub use recovery::{FramePos, RecoveryReport};
pub use state::{log2_bucket, quantile_bucket, SegmentInfo, WalStats, HISTOGRAM_BUCKETS};
pub use wal::{RecoveredWal, Wal};
