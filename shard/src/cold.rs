//! Trades that leave memory: a checkpoint writes the trades changed since the last one to the
//! table on disk (`trade_file.rs`); an open loads the newest back; a read or a change of a
//! trade that is not in memory reads its record, with one device read.
//!
//! The in-memory side (which chunks are resident, which trades are thawed or dirty) is the
//! trade table's (`trade_table.rs`); this module moves records between it and the file.

use std::collections::HashMap;

use tradeshard_wal::disk::Disk;

use crate::currency::Currency;
use crate::trade::TradeStatus;

use crate::error::TradeError;
use crate::id_hash::IdMap;
use crate::index::{CreatedAt, ShardIndex, StoredPart, TradeEntry};
use crate::state::Inner;
use crate::trade::TradeId;
use crate::trade_file::{self, TableRecord, TradeFile, RECORDS_PER_PAGE, RECORD_BYTES};
use crate::trade_table::Dirty;

/// Settled amounts per (merchant, currency).
pub type SettledTotals = Vec<((u64, Currency), u64)>;

/// Pages of the table in one write or one read.
const PAGES_PER_RUN: u64 = 256;

/// Writes the trades of `dirty`, as `snapshot` holds them, to the table with version
/// `position`, and syncs it. A page holding a trade only the table knows is read first;
/// `stored`: where the created parts copied by this checkpoint went.
pub(crate) async fn write_dirty<D: Disk>(
    table: &TradeFile<D>,
    snapshot: &ShardIndex,
    dirty: &Dirty,
    stored: &IdMap<TradeId, StoredPart>,
    position: u64,
) -> Result<u64, TradeError> {
    let trades = snapshot.trade_table();
    let counter_max = snapshot.counter_max();
    let page_bytes = trade_file::page_bytes();
    let mut pages: Vec<u64> = dirty.counters().map(|counter| counter / RECORDS_PER_PAGE).collect();
    pages.dedup();
    let mut written = 0u64;
    let mut run_start = 0;
    while run_start < pages.len() {
        // A run of consecutive pages, written at once.
        let first = pages[run_start];
        let mut run_end = run_start + 1;
        while run_end < pages.len()
            && pages[run_end] == pages[run_end - 1] + 1
            && pages[run_end] - first < PAGES_PER_RUN
        {
            run_end += 1;
        }
        let count = pages[run_end - 1] - first + 1;
        let mut bytes = vec![0u8; count as usize * page_bytes];
        for (n, page) in bytes.chunks_mut(page_bytes).enumerate() {
            let counters = (first + n as u64) * RECORDS_PER_PAGE..(first + n as u64 + 1) * RECORDS_PER_PAGE;
            let only_on_disk = counters.clone().any(|c| c >= 1 && c <= counter_max && trades.at_counter(c).is_err());
            if only_on_disk {
                page.copy_from_slice(&table.read_pages(first + n as u64, 1).await?);
            }
            for counter in counters {
                let (_, at) = trade_file::place(counter);
                let record = &mut page[at..at + RECORD_BYTES];
                match trades.at_counter(counter) {
                    Ok(Some((id, entry))) => {
                        let mut entry = *entry;
                        if let CreatedAt::Log(log_at) = entry.created_at {
                            let part = stored.get(&id).ok_or(TradeError::BadRecord {
                                seq: log_at.seq,
                                reason: "a trade's created part is neither stored nor among those to store",
                            })?;
                            entry.created_at = CreatedAt::Stored(*part);
                        }
                        trade_file::encode(id, &entry, position, record)
                            .map_err(|reason| TradeError::BadRecord { seq: entry.created_at.seq(), reason })?;
                    }
                    Ok(None) => record.fill(0),
                    Err(()) => {}
                }
            }
        }
        table.write_pages(first, &bytes).await?;
        written += bytes.len() as u64;
        run_start = run_end;
        glommio::yield_if_needed().await;
    }
    if written > 0 {
        table.sync().await?;
    }
    Ok(written)
}

/// Loads the newest `chunks` chunks of trades from the table into `index` (laid out cold, as
/// a checkpoint left it); a record must point inside the `parts_len` bytes of the store.
pub(crate) async fn load_newest<D: Disk>(
    table: &TradeFile<D>,
    index: &mut ShardIndex,
    chunks: usize,
    parts_len: u64,
) -> Result<(), TradeError> {
    let (counter_max, replay_from) = (index.counter_max(), index.applied_end());
    let ranges: Vec<_> = index.trade_table().cold_ranges().collect();
    let slots = index.trade_table().chunk_slots();
    for range in ranges.into_iter().rev().take(chunks) {
        let first_counter = range.start.max(1);
        let end_counter = range.end.min(counter_max + 1);
        let chunk = (range.start / slots) as usize;
        let mut loaded = Vec::with_capacity((end_counter - first_counter) as usize);
        scan(
            table,
            first_counter..end_counter,
            |_| false,
            |c, record| {
                check_part(table, c, &record, parts_len)?;
                index.note_table_record(record.id, &record.entry, record.version, replay_from);
                loaded.push(((c - range.start) as usize, record.entry));
                Ok(())
            },
        )
        .await?;
        index.trade_table_mut().load_chunk(chunk, loaded);
    }
    Ok(())
}

/// A record's created part must lie in the store as the checkpoint left it.
fn check_part<D: Disk>(
    table: &TradeFile<D>,
    counter: u64,
    record: &TableRecord,
    parts_len: u64,
) -> Result<(), TradeError> {
    match record.entry.created_at {
        CreatedAt::Stored(part) if part.offset + u64::from(part.len) <= parts_len => Ok(()),
        _ => {
            Err(table
                .corrupt(trade_file::file_offset(counter), "a trade record points past the store of created parts"))
        }
    }
}

/// The trade `id` from the table, if it has a record there under that id.
pub(crate) async fn read<D: Disk>(table: &TradeFile<D>, id: TradeId) -> Result<Option<TableRecord>, TradeError> {
    Ok(table.read(id.counter()).await?.filter(|record| record.id == id))
}

/// The trade's durable entry: from memory, or from the table when it is cold. `None`: no such
/// trade.
pub(crate) async fn entry<D: Disk>(inner: &Inner<D>, id: TradeId) -> Result<Option<TradeEntry>, TradeError> {
    let cold = {
        let index = inner.index.borrow();
        if let Some(entry) = index.get(id) {
            return Ok(Some(*entry));
        }
        index.trade_table().is_cold(id)
    };
    if !cold {
        return Ok(None);
    }
    let record = read(&inner.checkpoints.table, id).await?;
    // The trade may have been brought back and changed meanwhile: memory wins.
    Ok(inner.index.borrow().get(id).copied().or(record.map(|record| record.entry)))
}

/// Brings the trade back into memory (to be changed), unless it is there already or is no
/// trade. Returns whether it is in memory now.
pub(crate) async fn thaw<D: Disk>(inner: &Inner<D>, id: TradeId) -> Result<bool, TradeError> {
    if inner.index.borrow().get(id).is_some() {
        return Ok(true);
    }
    let Some(record) = read(&inner.checkpoints.table, id).await? else { return Ok(false) };
    let mut index = inner.index.borrow_mut();
    index.trade_table_mut().thaw(id, record.entry);
    Ok(index.get(id).is_some())
}

/// The amounts of the durable settled trades, summed per (merchant, currency), as of now: the
/// trades in memory, and those of the cold chunks from the table.
pub(crate) async fn settled_totals<D: Disk>(inner: &Inner<D>) -> Result<SettledTotals, TradeError> {
    // A snapshot shares the index's chunks: the scan sees one moment, whatever writes do.
    let snapshot = inner.index.borrow().clone();
    let trades = snapshot.trade_table();
    let mut totals: HashMap<(u64, Currency), u64> = HashMap::new();
    let mut add = |entry: &TradeEntry| {
        if entry.lifecycle.status == TradeStatus::Settled {
            *totals.entry((entry.merchant_id, entry.currency)).or_default() += entry.lifecycle.amount;
        }
    };
    trades.iter().for_each(|(_, entry)| add(entry));
    let counter_max = snapshot.counter_max();
    for range in trades.cold_ranges() {
        let counters = range.start.max(1)..range.end.min(counter_max + 1);
        // A thawed trade is counted from memory.
        let thawed = |c| trades.at_counter(c).is_ok();
        scan(&inner.checkpoints.table, counters, thawed, |_, record| {
            add(&record.entry);
            Ok(())
        })
        .await?;
    }
    Ok(totals.into_iter().collect())
}

/// Reads the records of `counters` from the table, a run of pages at a time, and calls `each`
/// with every record found, but for the counters `skip` names.
async fn scan<D: Disk>(
    table: &TradeFile<D>,
    counters: std::ops::Range<u64>,
    skip: impl Fn(u64) -> bool,
    mut each: impl FnMut(u64, TableRecord) -> Result<(), TradeError>,
) -> Result<(), TradeError> {
    let mut counter = counters.start;
    while counter < counters.end {
        let first_page = counter / RECORDS_PER_PAGE;
        let last_page = ((counters.end - 1) / RECORDS_PER_PAGE).min(first_page + PAGES_PER_RUN - 1);
        let bytes = table.read_pages(first_page, (last_page - first_page + 1) as usize).await?;
        let run_end = ((last_page + 1) * RECORDS_PER_PAGE).min(counters.end);
        for c in (counter..run_end).filter(|&c| !skip(c)) {
            let page = &bytes[((c / RECORDS_PER_PAGE - first_page) as usize) * trade_file::page_bytes()..];
            let found = trade_file::record_in_page(c, page)
                .map_err(|reason| table.corrupt(trade_file::file_offset(c), reason))?;
            if let Some(record) = found {
                each(c, record)?;
            }
        }
        counter = run_end;
        glommio::yield_if_needed().await;
    }
    Ok(())
}
