//! One shard: its log, its indexes, its cache, opened and closed as one.
//!
//! A write is checked against the shard's *accepted* view (durable state plus writes still in
//! flight), encoded, and queued in the log at once, so every request that arrives while a flush
//! is on the disk joins the next group commit (`write.rs`). Its effect is applied to the
//! durable indexes, and its caller answered, only once the log reports it durable, in log
//! order, by the shard's committer task (`committer.rs`). Reads look at durable state only
//! (`read.rs`): nothing is read before it is durable, and a caller that got an answer to a
//! write reads that write.
//!
//! After the log fails, the shard answers every write with the failure (the log acknowledges
//! nothing more until reopened); reads of durable state go on.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{SystemTime, UNIX_EPOCH};

use tradeshard_cache::{CacheStats, ReadThrough};
use tradeshard_wal::disk::Disk;
use tradeshard_wal::{RecoveredWal, Wal, WalConfig, WalStats};

use crate::currency::Currency;
use crate::error::TradeError;
use crate::events::{EventBatch, PollQuery};
use crate::index::ShardIndex;
use crate::state::{Accepted, Inner, ShardReply};
use crate::system_record::LogRecord;
use crate::trade::TradeStatus;

/// Counters of one shard.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShardStats {
    /// The shard's id (its partition).
    pub shard: u32,
    pub trades: u64,
    pub writes_in_flight: u64,
    pub wal: WalStats,
    pub cache: CacheStats,
}

/// One shard of the trade store, on the executor that opened it.
pub struct Shard<D: Disk> {
    pub(crate) inner: Rc<Inner<D>>,
    committer: Option<glommio::task::JoinHandle<()>>,
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// A shard whose log was verified and replayed into its indexes, not yet started: nothing on
/// disk has changed, and dropping it leaves the files as they were.
pub struct RecoveredShard<D: Disk> {
    shard_id: u32,
    wal: RecoveredWal<D>,
    index: ShardIndex,
    cache_bytes: usize,
}

impl<D: Disk> RecoveredShard<D> {
    /// Makes the log's repairs, starts it and the shard's committer.
    pub async fn start(self) -> Result<Shard<D>, TradeError> {
        let RecoveredShard { shard_id, wal, index, cache_bytes } = self;
        let wal = wal.start().await?;
        let accepted = Accepted { next_counter: index.counter_max() + 1, ..Accepted::default() };
        let inner = Rc::new(Inner {
            shard_id,
            wal,
            index: RefCell::new(index),
            accepted: RefCell::new(accepted),
            created_parts: ReadThrough::with_hasher(cache_bytes),
        });
        let committer = glommio::spawn_local(crate::committer::run(inner.clone())).detach();
        Ok(Shard { inner, committer: Some(committer) })
    }
}

impl<D: Disk> Shard<D> {
    /// Opens the shard's log on `disk`, rebuilding the indexes from every record, with a
    /// read-through cache of `cache_bytes` (0: every read goes to the log).
    pub async fn open(disk: D, wal_config: WalConfig, cache_bytes: usize) -> Result<Shard<D>, TradeError> {
        Self::recover(disk, wal_config, cache_bytes).await?.start().await
    }

    /// The first half of [`open`](Self::open): verifies the log and rebuilds the indexes from
    /// it, changing nothing on disk (see [`RecoveredShard::start`]).
    pub async fn recover(disk: D, wal_config: WalConfig, cache_bytes: usize) -> Result<RecoveredShard<D>, TradeError> {
        let mut index = ShardIndex::default();
        let mut replay_error = None;
        let shard_id = wal_config.shard_id;
        let (wal, _) = Wal::recover_with_positions(disk, wal_config, |at, bytes| {
            if replay_error.is_some() {
                return;
            }
            let applied = LogRecord::decode(bytes).and_then(|record| match record {
                LogRecord::Trade(record) => index.apply(&record, at),
                LogRecord::Offset(commit) => {
                    index.apply_offset(&commit);
                    Ok(())
                }
                LogRecord::Claim(claim) => index.apply_claim(&claim),
                LogRecord::ClaimSettled(settled) => index.apply_claim_settled(&settled),
            });
            if let Err(reason) = applied {
                replay_error = Some(TradeError::BadRecord { seq: at.seq, reason });
            }
        })
        .await?;
        if let Some(error) = replay_error {
            return Err(error);
        }
        Ok(RecoveredShard { shard_id, wal, index, cache_bytes })
    }

    /// `group`'s durable committed offset in this shard, if it ever committed one.
    pub fn committed_offset(&self, group: &str) -> Option<u64> {
        self.inner.index.borrow().committed_offset(group)
    }

    /// The offsets a consumer can read: the first retained and the durable end.
    pub fn offset_range(&self) -> (u64, u64) {
        (self.inner.wal.first_seq(), self.inner.wal.durable_end())
    }

    /// The offset after the last durable trade event (offset commits after it are no events).
    pub fn events_end(&self) -> u64 {
        self.inner.index.borrow().events_end()
    }

    /// Trade events from `query.from` on, durable only, in log order, as the log holds their
    /// bytes (decoded by the reader, on its own thread); waits up to `query.wait` for one if
    /// there is none yet (a long poll).
    pub fn poll_events(&self, query: PollQuery, reply: ShardReply<EventBatch>) {
        let inner = self.inner.clone();
        glommio::spawn_local(async move { reply.send(crate::events::poll(inner.shard_id, &inner.wal, query).await) })
            .detach();
    }

    /// The amounts of the durable settled trades, summed per (merchant, currency): what a
    /// settlement consumer's totals must equal.
    pub fn settled_totals(&self) -> Vec<((u64, Currency), u64)> {
        let mut totals: std::collections::HashMap<(u64, Currency), u64> = std::collections::HashMap::new();
        for (_, entry) in self.inner.index.borrow().trades() {
            if entry.lifecycle.status == TradeStatus::Settled {
                *totals.entry((entry.merchant_id, entry.currency)).or_default() += entry.lifecycle.amount;
            }
        }
        totals.into_iter().collect()
    }

    /// Counters of the shard.
    pub fn stats(&self) -> ShardStats {
        ShardStats {
            shard: self.inner.shard_id,
            trades: self.inner.index.borrow().len() as u64,
            writes_in_flight: self.inner.accepted.borrow().effects.len() as u64,
            wal: self.inner.wal.stats(),
            cache: self.inner.created_parts.cache().borrow().stats(),
        }
    }

    /// Stops taking writes, waits for those in flight, and closes the log (synced).
    pub async fn close(mut self) -> Result<(), TradeError> {
        {
            let mut accepted = self.inner.accepted.borrow_mut();
            accepted.closing = true;
            accepted.wake();
        }
        if let Some(committer) = self.committer.take() {
            committer.await;
        }
        // Reads and polls in flight hold the shard; long polls are cut short, the rest finish.
        self.inner.wal.stop_waits();
        while Rc::strong_count(&self.inner) > 1 {
            glommio::timer::sleep(std::time::Duration::from_millis(1)).await;
        }
        let inner = self.inner.clone();
        drop(self);
        let inner = Rc::try_unwrap(inner).ok().expect("no other holder is left");
        Ok(inner.wal.close().await?)
    }
}

impl<D: Disk> Drop for Shard<D> {
    /// Without `close`, writes in flight still complete; the log closes once they have.
    fn drop(&mut self) {
        self.inner.wal.stop_waits();
        let mut accepted = self.inner.accepted.borrow_mut();
        accepted.closing = true;
        accepted.wake();
    }
}
