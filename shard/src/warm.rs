//! Bringing whole chunks of trades back from the table into memory: the newest ones after an
//! open, in the background, up to the memory budget; and, during an open, the chunks whose
//! trades the replay changed in numbers.
//!
//! An open used to load the newest chunks before its replay. That read up to the whole budget
//! of the table (128 bytes a trade) before the shard served anything: the device's sequential
//! rate, not the work since the last checkpoint, set the open's time. Now the open loads only
//! the chunks its replay needs, and the shard serves at once; until a chunk is warm, its
//! trades are read from the table like any trade that left memory (`cold.rs`).
//!
//! A chunk is read without holding the index, so memory can move on under the read: a trade
//! of the chunk thawed, changed or made new meanwhile is in memory and wins over what was read
//! ([`TradeTable::load_chunk`](crate::trade_table::TradeTable::load_chunk)); an eviction
//! meanwhile (a checkpoint wrote the table and let trades go) makes what was read suspect, so
//! the chunk is read again.

use tradeshard_wal::disk::Disk;

use crate::cold::{check_part, scan_states};
use crate::error::TradeError;
use crate::index::ShardIndex;
use crate::state::Inner;
use crate::trade_file::{TableState, TradeFile};

/// Whether a chunk of `slots` trades, `changed` of them changed by a replay while not in
/// memory, is loaded whole (one sequential read) rather than read a trade at a time: a read of
/// a chunk of 4,096 records (512 KiB) costs the device about what 32 reads of one record do.
pub(crate) fn load_whole(slots: u64, changed: usize) -> bool {
    changed as u64 >= (slots / 128).clamp(2, 32)
}

/// What a read of one chunk found: the state of each counter the table held when read.
pub(crate) struct ReadChunk {
    chunk: usize,
    states: Vec<(u64, Option<TableState>)>,
}

/// Reads chunk `chunk`'s trades from the table, up to the highest counter laid out now.
pub(crate) async fn read_chunk<D: Disk>(
    table: &TradeFile<D>,
    index: &ShardIndex,
    chunk: usize,
) -> Result<ReadChunk, TradeError> {
    read_counters(table, chunk, chunk_counters(index, chunk)).await
}

/// The counters of chunk `chunk` up to the highest laid out now.
fn chunk_counters(index: &ShardIndex, chunk: usize) -> std::ops::Range<u64> {
    let trades = index.trade_table();
    let first = chunk as u64 * trades.chunk_slots();
    first.max(1)..(first + trades.chunk_slots()).min(trades.dense_max() + 1)
}

async fn read_counters<D: Disk>(
    table: &TradeFile<D>,
    chunk: usize,
    counters: std::ops::Range<u64>,
) -> Result<ReadChunk, TradeError> {
    let mut states = Vec::with_capacity(counters.clone().count());
    scan_states(table, counters, |counter, state| {
        states.push((counter, state));
        Ok(())
    })
    .await?;
    Ok(ReadChunk { chunk, states })
}

/// Makes the chunk read resident. Each counter memory knows keeps memory's entry; every other
/// counter must have had its record in the table (it must point inside the `parts_len` bytes
/// of the store). `replay_from`: during an open, the position its replay started from (a
/// record newer than it is noted for the replay's end).
pub(crate) fn install<D: Disk>(
    table: &TradeFile<D>,
    index: &mut ShardIndex,
    read: ReadChunk,
    parts_len: u64,
    replay_from: Option<u64>,
) -> Result<(), TradeError> {
    let slots = index.trade_table().chunk_slots();
    let first = read.chunk as u64 * slots;
    let mut entries = Vec::with_capacity(read.states.len());
    for (counter, state) in read.states {
        if index.trade_table().at_counter(counter).is_ok() {
            continue;
        }
        let offset = crate::trade_file::file_offset(counter);
        let state = state.ok_or_else(|| table.corrupt(offset, "no record for a trade the table holds"))?;
        check_part(table, counter, &state.entry, parts_len)?;
        if let Some(from) = replay_from {
            index.note_table_record(state.id, &state.entry, state.version, from);
        }
        entries.push(((counter - first) as usize, state.entry));
    }
    index.trade_table_mut().load_chunk(read.chunk, entries);
    Ok(())
}

/// After an open: loads the newest cold chunks until `chunks` are resident, newest first,
/// between the shard's requests, in a task of its own (checkpoints go on meanwhile). Stops
/// when the shard closes or fails. A chunk whose read fails is counted and left in the table
/// (a read of one of its trades reports the error); the older chunks are still loaded.
pub(crate) async fn newest<D: Disk>(inner: &Inner<D>, chunks: usize) {
    // The chunks cold at the open, newest first; every chunk made since is resident.
    let cold: Vec<usize> = {
        let index = inner.index.borrow();
        let trades = index.trade_table();
        let mut cold: Vec<usize> = trades.cold_ranges().map(|range| trades.chunk_of(range.start)).collect();
        cold.reverse();
        cold
    };
    for chunk in cold {
        let closing = || inner.accepted.borrow().closing || inner.accepted.borrow().failed.is_some();
        if closing() || inner.index.borrow().trade_table().resident_chunks() >= chunks {
            break;
        }
        match warm_chunk(inner, chunk).await {
            Ok(true) => inner.checkpoints.count(|stats| stats.chunks_warmed += 1),
            Ok(false) => {}
            Err(_) => inner.checkpoints.count(|stats| stats.warm_failures += 1),
        }
        crate::turns::take_turn().await;
    }
    inner.checkpoints.count(|stats| stats.warming = false);
}

/// Reads chunk `chunk` and makes it resident, unless it is no longer cold; reads it again
/// while an eviction overtakes the read (one may have let go a trade whose record the read
/// found older than what the checkpoint before it wrote). Returns whether it loaded it.
async fn warm_chunk<D: Disk>(inner: &Inner<D>, chunk: usize) -> Result<bool, TradeError> {
    let table = &inner.checkpoints.table;
    loop {
        let (counters, evictions) = {
            let index = inner.index.borrow();
            if !index.trade_table().is_cold_chunk(chunk) {
                return Ok(false);
            }
            (chunk_counters(&index, chunk), index.trade_table().evictions())
        };
        let read = read_counters(table, chunk, counters).await?;
        let mut index = inner.index.borrow_mut();
        if !index.trade_table().is_cold_chunk(chunk) {
            return Ok(false);
        }
        if index.trade_table().evictions() == evictions {
            install(table, &mut index, read, inner.checkpoints.parts.len(), None)?;
            return Ok(true);
        }
    }
}
