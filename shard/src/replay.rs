//! An open's replay of the log after its checkpoint into the shard's index: records applied
//! in log order, in batches whose entries are looked up together first, their changes to the
//! keyed maps and the branches and activities that end set aside and applied part by part
//! (`index/staged.rs`, `tcc_aside.rs`), and the changes to trades not in memory set aside
//! until their records are read from the table.

use tradeshard_wal::disk::Disk;
use tradeshard_wal::Appended;

use crate::cold;
use crate::error::TradeError;
use crate::id_hash::IdMap;
use crate::index::{ShardIndex, StagedKeys};
use crate::record::{Funding, RecordKind, TradeRecord, TradeRecordView};
use crate::system_record::LogRecord;
use crate::trade::TradeId;
use crate::trade_file::TradeFile;

/// Records an open's replay decodes before applying them: their branches and activities are
/// looked up together first ([`ShardIndex::touch_replayed`]), so that the cache misses overlap.
pub(crate) const REPLAY_BATCH: usize = 64;

/// A create's order key and body hash; none for other records.
type CreatedKeys = Option<(u128, u64)>;

/// A replayed record where it lies in the log, with its [`CreatedKeys`].
pub(crate) type Replayed = (Appended, LogRecord, CreatedKeys);

/// Decodes a record for the replay, checking everything: a create's order number and memo
/// become the keys they hash to and its record keeps neither (the index holds no strings, so
/// the replay allocates none for them; a create is never set aside for the table, whose
/// changes are applied again from their records: [`Deferred::takes`]).
pub(crate) fn decode(bytes: &[u8]) -> Result<(LogRecord, CreatedKeys), &'static str> {
    if LogRecord::is_system(bytes) {
        return LogRecord::decode(bytes).map(|record| (record, None));
    }
    let view = TradeRecordView::decode(bytes)?;
    Ok((LogRecord::Trade(view.into_record_without_created()), view.created_keys()))
}

/// Applies the replayed records of `batch` in log order and empties it; stops at the first that
/// does not apply. Their changes to the order keys, claims and users' lists are set aside in
/// `staged` (applied once it is full, and by [`apply_staged`] at the replay's end).
pub(crate) fn replay_batch(
    index: &mut ShardIndex,
    deferred: &mut Deferred,
    staged: &mut StagedKeys,
    shard_id: u32,
    batch: &mut Vec<Replayed>,
) -> Result<(), TradeError> {
    for (_, record, _) in batch.iter() {
        index.touch_replayed(record);
    }
    // Applied where they lie: a record is 192 bytes, and moving each out of the batch cost
    // more than its apply.
    let mut result = Ok(());
    for &(at, ref record, keys) in batch.iter() {
        index.note_applied(at.seq);
        let applied = match record {
            // The money a record moves is applied in log order, even when the trade's own
            // change waits for the table: account records after it were checked with it.
            LogRecord::Trade(record) if record.funding != Funding::External => {
                index.apply_money(record, shard_id).and_then(|()| match deferred.takes(index, record) {
                    false => apply_trade(index, staged, record, at, keys),
                    true => {
                        deferred.records.push((record.clone(), at));
                        Ok(())
                    }
                })
            }
            // Changes to trades that are not in memory wait until the replay ends, when their
            // records are read from the table (the replay cannot wait for the device).
            LogRecord::Trade(record) if deferred.takes(index, record) => {
                deferred.records.push((record.clone(), at));
                Ok(())
            }
            LogRecord::Trade(record) => apply_trade(index, staged, record, at, keys),
            LogRecord::Offset(commit) => {
                index.apply_offset(commit);
                Ok(())
            }
            LogRecord::Claim(claim) => {
                staged.claim(claim, at.seq);
                Ok(())
            }
            LogRecord::ClaimSettled(settled) => {
                staged.settled(settled, at.seq);
                Ok(())
            }
            LogRecord::ClaimsKnown(mark) => {
                index.note_claims_known(mark.below_counter);
                Ok(())
            }
            LogRecord::Journal(record) => index.accounts_mut().apply_but_request(record).map(|(key, entry)| {
                staged.request(key, entry, at.seq);
            }),
            LogRecord::Tcc(record) => index.apply_tcc_replayed(record, &mut staged.ended).map(drop),
            LogRecord::Message(record) => index.apply_message(at.seq, record).map(drop),
        };
        if let Err(reason) = applied {
            result = Err(TradeError::BadRecord { seq: at.seq, reason });
            break;
        }
    }
    batch.clear();
    if result.is_ok() && staged.full() {
        result = apply_staged(index, staged);
    }
    result
}

/// Applies the changes to the keyed maps set aside (`index/staged.rs`). Every one of them came
/// from a record before any that failed to apply, so its error, if any, is the replay's first.
pub(crate) fn apply_staged(index: &mut ShardIndex, staged: &mut StagedKeys) -> Result<(), TradeError> {
    index.apply_staged(staged).map_err(|(seq, reason)| TradeError::BadRecord { seq, reason })
}

/// A trade's record, its order key and user's list set aside when it creates the trade.
fn apply_trade(
    index: &mut ShardIndex,
    staged: &mut StagedKeys,
    record: &TradeRecord,
    at: Appended,
    keys: CreatedKeys,
) -> Result<(), &'static str> {
    if record.kind != RecordKind::Created {
        return index.apply_keyed(record, at, None);
    }
    let (key, body) = keys.ok_or("created record without its fields")?;
    index.apply_created_unkeyed(record, at)?;
    staged.created(key, record.trade_id, body, record.user_id, at.seq);
    Ok(())
}

/// The changes an open's replay met for trades not in memory, in log order.
#[derive(Default)]
pub(crate) struct Deferred {
    pub(crate) records: Vec<(TradeRecord, Appended)>,
    ids: IdMap<TradeId, ()>,
}

impl Deferred {
    /// Whether `record` waits: it changes a trade not in memory, or one with changes waiting.
    fn takes(&mut self, index: &ShardIndex, record: &TradeRecord) -> bool {
        let id = record.trade_id;
        let waits =
            record.kind != RecordKind::Created && (self.ids.contains_key(&id) || index.trade_table().is_cold(id));
        if waits {
            self.ids.insert(id, ());
        }
        waits
    }

    /// Reads the trades from the table and applies their changes, in log order (the replay
    /// started at `from`; records must point inside the `parts_len` bytes of the store). A
    /// chunk with many of those trades is loaded whole (up to `chunks_max` of them, the
    /// newest), the other trades are read one at a time.
    pub(crate) async fn apply<D: Disk>(
        self,
        table: &TradeFile<D>,
        index: &mut ShardIndex,
        from: u64,
        parts_len: u64,
        chunks_max: usize,
    ) -> Result<(), TradeError> {
        let mut per_chunk: IdMap<usize, usize> = IdMap::default();
        for id in self.ids.keys() {
            *per_chunk.entry(index.trade_table().chunk_of(id.counter())).or_default() += 1;
        }
        let mut whole: Vec<usize> = per_chunk
            .into_iter()
            .filter(|&(chunk, trades)| {
                crate::warm::load_whole(index.trade_table().chunk_slots(), trades)
                    && index.trade_table().is_cold_chunk(chunk)
            })
            .map(|(chunk, _)| chunk)
            .collect();
        whole.sort_unstable_by(|a, b| b.cmp(a));
        whole.truncate(chunks_max.saturating_sub(index.trade_table().resident_chunks()));
        for &chunk in &whole {
            let read = crate::warm::read_chunk(table, index, chunk).await?;
            crate::warm::install(table, index, read, parts_len, Some(from))?;
        }
        let mut ids: Vec<TradeId> = self.ids.into_keys().filter(|id| index.trade_table().is_cold(*id)).collect();
        ids.sort_unstable();
        let dense_max = index.trade_table().dense_max();
        for (id, record) in ids.iter().zip(cold::read_many(table, &ids, dense_max, parts_len).await?) {
            if let Some(record) = record {
                index.note_table_record(*id, &record.entry, record.version, from);
                index.trade_table_mut().thaw(*id, record.entry);
            }
        }
        for (record, at) in self.records {
            index.apply(&record, at).map_err(|reason| TradeError::BadRecord { seq: at.seq, reason })?;
        }
        Ok(())
    }
}
