//! How a shard of the engine is configured, and how it is opened on its own directory: the
//! shard builds its log (its limits, its disk) from this, so that the engine names no part of
//! the log.

use std::path::Path;
use std::sync::Arc;

use tradeshard_wal::disk::DmaDisk;
use tradeshard_wal::{Durability, SyncMethod, WalConfig};

use crate::error::{LogError, TradeError};
use crate::message::MESSAGE_RECORD_BYTES_MAX;
use crate::record::RECORD_BYTES_MAX;
use crate::retention::Upkeep;
use crate::shard::{RecoveredShard, Shard};

/// Frame payload limit of a shard's log. Trade records are at most a few hundred bytes; a
/// point read decodes one piece of a frame (`WalConfig::piece_raw_bytes`), not the frame, so
/// this bounds only what a sequential reader decodes at once.
const FRAME_PAYLOAD_BYTES: u32 = 64 << 10;

/// Largest record of a shard's log: a message record (trade, journal and transaction records
/// are smaller), with room in a frame for its length prefix.
const LOG_RECORD_BYTES_MAX: usize =
    if MESSAGE_RECORD_BYTES_MAX > RECORD_BYTES_MAX { MESSAGE_RECORD_BYTES_MAX } else { RECORD_BYTES_MAX };
const _: () = assert!(LOG_RECORD_BYTES_MAX + 4 <= FRAME_PAYLOAD_BYTES as usize, "a record fits a frame");

/// Fewest records a shard's log lets wait for a flush, whatever the engine's queue depth.
const PENDING_RECORDS_MIN: usize = 1 << 16;

/// What a shard needs to open: its id, what an acknowledgement promises, and its limits.
#[derive(Debug, Clone)]
pub struct ShardConfig {
    /// The physical shard's id (its partition); its log's segments carry it.
    pub shard_id: u32,
    /// What a write's acknowledgement promises.
    pub durability: Durability,
    /// How the log makes a write durable.
    pub sync_method: SyncMethod,
    /// Bytes of each segment of the log.
    pub segment_bytes: u64,
    /// Records waiting for a flush at most (at least 65,536).
    pub pending_records_max: usize,
    /// Bytes of the read-through cache; 0 turns it off.
    pub cache_bytes: usize,
    /// Checkpoints and retention.
    pub upkeep: Upkeep,
}

impl ShardConfig {
    /// The log's configuration for this shard.
    pub fn wal_config(&self) -> WalConfig {
        WalConfig {
            shard_id: self.shard_id,
            durability: self.durability,
            segment_bytes: self.segment_bytes,
            pending_records_max: self.pending_records_max.max(PENDING_RECORDS_MIN),
            frame_payload_bytes_max: FRAME_PAYLOAD_BYTES,
            record_bytes_max: LOG_RECORD_BYTES_MAX as u32,
            recycled_segments_max: self.upkeep.recycled_segments_max,
            ..WalConfig::default()
        }
    }
}

/// A shard whose log lives in a directory of the real disk (glommio direct I/O).
pub type DiskShard = Shard<DmaDisk>;

impl Shard<DmaDisk> {
    /// Verifies and replays the shard's log in `dir` (created if absent), changing nothing on
    /// disk: the first half of an open (see [`RecoveredShard::start`]).
    pub async fn recover_dir(dir: &Path, config: &ShardConfig) -> Result<RecoveredShard<DmaDisk>, TradeError> {
        let disk = DmaDisk::new(dir).map_err(|source| {
            TradeError::Log(LogError::Io { op: "create directory", path: dir.to_path_buf(), source: Arc::new(source) })
        })?;
        Shard::recover(
            disk.with_sync_method(config.sync_method),
            config.wal_config(),
            config.cache_bytes,
            config.upkeep,
        )
        .await
    }
}
