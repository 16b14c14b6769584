//! Retention of a shard's log: which sealed segments may go.
//!
//! A segment may go once everything in it is held elsewhere: below the position of the older
//! of the two checkpoints kept (so that a damaged newest checkpoint can still fall back to the
//! older one and replay the log after it), and the trades' created parts copied to their store.
//! Among those, a segment goes when every live consumer group has committed past it, or when
//! it is older than the retention time, or when the log without it still holds the retention
//! bytes (Kafka's `retention.ms` and `retention.bytes`). With no group at all, only time and
//! bytes remove segments: a settlement consumer that has not started yet must still find the
//! events. Segments go oldest first, so the log stays one contiguous run.

use std::time::Duration;

use tradeshard_wal::SegmentInfo;

use crate::trade_table::{CHUNK_BITS_MAX, CHUNK_BITS_MIN};

/// When a shard checkpoints and what its log keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Upkeep {
    /// A checkpoint is taken once the log has written this many bytes since the last one
    /// (frames with their padding, and the zeros of segments prepared ahead).
    pub checkpoint_log_bytes: u64,
    /// ... or once this long has passed with records applied since the last one ...
    pub checkpoint_interval: Duration,
    /// ... or once what the shard holds in memory for the work since the last one has grown
    /// by this many bytes (order keys, users' lists, refunds, claims, account requests,
    /// branches and activities, the new trades' entries: `index/held.rs`). Each entry counts
    /// at its size; the hash tables' slack can add as much again.
    pub checkpoint_memory_bytes: u64,
    /// Take a checkpoint when the shard closes, so the next open replays nothing.
    pub checkpoint_on_close: bool,
    /// Segments whose last record is older than this go, whatever the groups' offsets.
    pub retention_time: Option<Duration>,
    /// The oldest segments go while the log without them still holds this many bytes.
    pub retention_bytes: Option<u64>,
    /// Segments that retention took, kept as files to be made the next segments (at most
    /// this many, each `segment_bytes` of disk), so that a roll writes no new file; 0 removes
    /// them (`WalConfig::recycled_segments_max`).
    pub recycled_segments_max: usize,
    /// A group that committed nothing for this long expires: its offsets are forgotten and no
    /// longer hold the log (Kafka's `offsets.retention.minutes`).
    pub group_idle_expiry: Option<Duration>,
    /// Memory for the shard's trades (88 bytes each): past it, after each checkpoint, the
    /// oldest trades leave memory for the table on disk (`trade_table/`). The trades changed
    /// since the last checkpoint stay on top of it.
    pub trade_memory_bytes: u64,
    /// How application messages are retried, and how many bytes of them the shard holds.
    pub messages: crate::message_book::MessagePolicy,
    /// How long a key is remembered for uniqueness and idempotency at least: merchant order
    /// numbers, refund and account request numbers, the branches and activities of flexible
    /// transactions. A request repeating a key older than this may be taken as new (a second
    /// trade with an old order number, a second transfer under an old request number). The
    /// runs past it keep no Bloom filter in memory (`runs/set.rs`), so that memory is set by
    /// the keys of one window, not by every key ever held; a trade stays found by its order
    /// number however old. `None`: every key is remembered, and the filters' memory grows with
    /// the keys held (about 2 bytes a key).
    pub key_window: Option<Duration>,
    /// Memory for the blocks of the runs of keys read lately (`runs/blocks.rs`): a user's
    /// listing and a retried create read them again without the device. 0 keeps none.
    pub run_cache_bytes: u64,
    /// Memory for the pages of the frozen blocks' index read lately
    /// (`trade_file/frozen_index.rs`): a page of 2 KiB of entries covers 16,384 trades, and a
    /// cold trade whose page is kept costs one read instead of two. 0 keeps none.
    pub frozen_index_cache_bytes: u64,
}

/// Bytes of a trade's entry in memory (asserted in `index.rs`).
pub(crate) const TRADE_ENTRY_BYTES: u64 = 88;

impl Upkeep {
    /// Trades the memory budget holds.
    pub(crate) fn trades_in_budget(&self) -> u64 {
        self.trade_memory_bytes / TRADE_ENTRY_BYTES
    }

    /// The trade table's chunks hold 2^this slots: 4,096, fewer when the budget holds fewer
    /// than sixteen such chunks, so that eviction stays fine-grained under a small budget.
    pub(crate) fn chunk_bits(&self) -> u32 {
        let per_chunk = (self.trades_in_budget() / 16).max(1);
        (63 - per_chunk.leading_zeros()).clamp(CHUNK_BITS_MIN, CHUNK_BITS_MAX)
    }

    /// Chunks of the trade table kept in memory (at least two).
    pub(crate) fn resident_chunks(&self) -> usize {
        ((self.trades_in_budget() >> self.chunk_bits()) as usize).max(2)
    }
}

impl Default for Upkeep {
    fn default() -> Self {
        const WEEK: Duration = Duration::from_secs(7 * 24 * 3600);
        Upkeep {
            checkpoint_log_bytes: 1 << 30,
            checkpoint_interval: Duration::from_secs(60),
            checkpoint_memory_bytes: 128 << 20,
            checkpoint_on_close: true,
            retention_time: Some(WEEK),
            retention_bytes: None,
            recycled_segments_max: 4,
            group_idle_expiry: Some(WEEK),
            trade_memory_bytes: 512 << 20,
            messages: crate::message_book::MessagePolicy::default(),
            key_window: None,
            run_cache_bytes: 16 << 20,
            frozen_index_cache_bytes: 4 << 20,
        }
    }
}

/// The first record the log must keep. `segments` oldest first (the last is the tail, which
/// always stays); `checkpoint_floor`: nothing at or above it may go; `groups_floor`: the
/// lowest committed offset of a live group, if there is a group.
pub(crate) fn keep_from(
    segments: &[SegmentInfo],
    checkpoint_floor: u64,
    groups_floor: Option<u64>,
    upkeep: &Upkeep,
    now_ms: u64,
) -> u64 {
    let Some(first) = segments.first() else { return 0 };
    let mut total: u64 = segments.iter().map(|s| s.bytes).sum();
    let mut keep = first.base_seq;
    for segment in &segments[..segments.len() - 1] {
        if segment.end_seq > checkpoint_floor {
            break;
        }
        let consumed = groups_floor.is_some_and(|floor| floor >= segment.end_seq);
        let expired = match (upkeep.retention_time, segment.last_write_ms) {
            (Some(time), Some(last)) => last.saturating_add(time.as_millis() as u64) <= now_ms,
            _ => false,
        };
        let beyond_bytes = upkeep.retention_bytes.is_some_and(|bytes| total - segment.bytes >= bytes);
        if !(consumed || expired || beyond_bytes) {
            break;
        }
        total -= segment.bytes;
        keep = segment.end_seq;
    }
    keep
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Four segments of 100 records and 1,000 bytes each, the last written at `10 * (i + 1)` ms.
    fn segments() -> Vec<SegmentInfo> {
        (0..4u64)
            .map(|i| SegmentInfo {
                base_seq: i * 100,
                end_seq: (i + 1) * 100,
                created_ms: 10 * i,
                last_write_ms: (i < 3).then_some(10 * (i + 1)),
                bytes: 1_000,
            })
            .collect()
    }

    fn upkeep(time_ms: Option<u64>, bytes: Option<u64>) -> Upkeep {
        Upkeep { retention_time: time_ms.map(Duration::from_millis), retention_bytes: bytes, ..Upkeep::default() }
    }

    #[test]
    fn groups_release_what_every_one_has_consumed_and_nothing_past_the_checkpoint() {
        let none = upkeep(None, None);
        assert_eq!(keep_from(&segments(), 400, Some(250), &none, 0), 200);
        assert_eq!(keep_from(&segments(), 150, Some(400), &none, 0), 100, "the checkpoint floor holds");
        assert_eq!(keep_from(&segments(), 400, Some(400), &none, 0), 300, "the tail always stays");
        assert_eq!(keep_from(&segments(), 400, None, &none, 0), 0, "no group: only time and bytes remove");
    }

    #[test]
    fn time_and_bytes_remove_the_oldest_whatever_the_groups() {
        assert_eq!(keep_from(&segments(), 400, Some(0), &upkeep(Some(15), None), 35), 200);
        assert_eq!(keep_from(&segments(), 400, Some(0), &upkeep(Some(15), None), 34), 100);
        assert_eq!(keep_from(&segments(), 400, None, &upkeep(None, Some(2_000)), 0), 200);
        assert_eq!(keep_from(&segments(), 400, None, &upkeep(None, Some(2_500)), 0), 100);
        assert_eq!(keep_from(&segments(), 100, None, &upkeep(Some(0), None), 1_000), 100, "checkpoint floor");
    }
}
