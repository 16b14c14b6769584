//! tradeshard's write-ahead log: the one log per shard that is at once the write-ahead log,
//! the store of record and the message queue.
//!
//! The log owns segment files, frame encoding, checksums, group commit, recovery and reads by
//! sequence number. It knows nothing of trades, shards or caches: records are opaque bytes.
//!
//! - [`Wal`]: open (recover), `enqueue`/`append` (group-committed), `read`, `reader`, `close`.
//! - [`disk`]: the storage trait, with glommio direct I/O and a fault-injecting simulation.
//! - On-disk layout: `docs/FORMAT.md`; design and invariants: `ARCHITECTURE.md`.

pub mod batch;
mod commit;
mod config;
mod cursor;
pub mod disk;
mod error;
mod reader;
mod recovery;
mod roll;
pub mod segment;
mod state;
mod wal;
mod writer;

pub use commit::{Appended, PiecePos, Ticket};
pub use config::{align_up, Compression, Durability, Preallocation, WalConfig, BLOCK_BYTES, LZ4_MIN_BYTES};
pub use disk::SyncMethod;
pub use error::{Error, Result};
pub use reader::LogReader;
pub use recovery::RecoveryReport;
pub use state::WalStats;
pub use wal::{RecoveredWal, Wal};
