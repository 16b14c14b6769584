//! Trades that leave memory: a checkpoint writes the trades changed since the last one to the
//! table on disk (`trade_file.rs`); a read or a change of a trade that is not in memory reads
//! its record, with one device read; whole chunks come back through `warm.rs`.
//!
//! The in-memory side (which chunks are resident, which trades are thawed or dirty) is the
//! trade table's (`trade_table/`); this module moves records between it and the file.

use std::collections::HashMap;

use tradeshard_wal::disk::Disk;

use crate::currency::Currency;
use crate::join::{join_all, start};
use crate::trade::TradeStatus;

use crate::created::CreatedPart;
use crate::error::TradeError;
use crate::id_hash::IdMap;
use crate::index::{CreatedAt, ShardIndex, TradeEntry};
use crate::parts::PlacedParts;
use crate::state::Inner;
use crate::trade::TradeId;
use crate::trade_file::{self, TableRecord, TableState, TradeFile, RECORDS_PER_PAGE, RECORD_BYTES};
use crate::trade_table::Dirty;

/// Settled amounts per (merchant, currency); wide enough for any number of the largest trades.
pub type SettledTotals = Vec<((u64, Currency), u128)>;

/// Pages of the table in one write or one read.
const PAGES_PER_RUN: u64 = 256;

/// Pages a checkpoint reads ahead of its writes, held at once at most (1 MiB), beside a run's.
const PAGES_READ_HELD: usize = PAGES_PER_RUN as usize;

/// Reads in flight at once when many records or pages are read apart.
const READS_IN_FLIGHT: usize = 32;

/// Writes the trades of `dirty`, as `snapshot` holds them, to the table with version
/// `position`, and syncs it. A page is read first when it holds a trade only the table knows,
/// or one whose created part only the table holds (inline, kept as it was); those reads go out
/// together, a group of runs at a time ([`plan_writes`]). `placed`: where this checkpoint put
/// the created parts it copied from the log.
pub(crate) async fn write_dirty<D: Disk>(
    table: &TradeFile<D>,
    snapshot: &ShardIndex,
    dirty: &Dirty,
    placed: &PlacedParts,
    position: u64,
) -> Result<u64, TradeError> {
    let trades = snapshot.trade_table();
    let page_bytes = trade_file::page_bytes();
    let counters_of = |page: u64| page * RECORDS_PER_PAGE..(page + 1) * RECORDS_PER_PAGE;
    let mut pages: Vec<u64> = dirty.counters().map(|counter| counter / RECORDS_PER_PAGE).collect();
    pages.dedup();
    let needs_disk = |counter| match trades.at_counter(counter) {
        Err(()) => true,
        Ok(Some((_, entry))) => matches!(entry.created_at, CreatedAt::Table(_)),
        Ok(None) => false,
    };
    let mut written = 0u64;
    for group in plan_writes(&pages, |page| counters_of(page).any(needs_disk)) {
        let mut on_disk: IdMap<u64, Vec<u8>> = IdMap::default();
        for window in group.to_read.chunks(READS_IN_FLIGHT) {
            let reads = join_all(window.iter().map(|&page| table.read_pages(page, 1))).await;
            for (page, read) in window.iter().zip(reads) {
                on_disk.insert(*page, read?);
            }
        }
        for (first, count) in group.runs {
            let mut bytes = vec![0u8; count as usize * page_bytes];
            for (n, page) in bytes.chunks_mut(page_bytes).enumerate() {
                let page_no = first + n as u64;
                if let Some(held) = on_disk.get(&page_no) {
                    page.copy_from_slice(held);
                }
                fill_page(table, trades, placed, position, page_no, page)?;
            }
            table.write_pages(first, &bytes).await?;
            written += bytes.len() as u64;
            crate::turns::take_turn().await;
        }
    }
    if written > 0 {
        table.sync().await?;
    }
    Ok(written)
}

/// Writes the records of page `page_no` as `trades` holds them over `page` (the page as the
/// table holds it, where it had to be read): a cold trade's record stays as it is.
fn fill_page<D: Disk>(
    table: &TradeFile<D>,
    trades: &crate::trade_table::TradeTable<TradeEntry>,
    placed: &PlacedParts,
    position: u64,
    page_no: u64,
    page: &mut [u8],
) -> Result<(), TradeError> {
    for counter in page_no * RECORDS_PER_PAGE..(page_no + 1) * RECORDS_PER_PAGE {
        let (_, at) = trade_file::place(counter);
        match trades.at_counter(counter) {
            Ok(Some((id, entry))) => {
                let mut entry = *entry;
                let inline = match entry.created_at {
                    CreatedAt::Log(log_at) => {
                        let (at, inline) = placed.get(id).ok_or(TradeError::BadRecord {
                            seq: log_at.seq,
                            reason: "a trade's created part is neither stored nor among those to store",
                        })?;
                        entry.created_at = at;
                        inline
                    }
                    CreatedAt::Stored(_) => None,
                    // Read with the page: the record on disk holds the part.
                    CreatedAt::Table(_) => {
                        let offset = trade_file::file_offset(counter);
                        let on_disk = trade_file::record_in_page(counter, page)
                            .map_err(|reason| table.corrupt(offset, reason))?;
                        let inline = on_disk.and_then(|record| record.inline);
                        Some(inline.ok_or_else(|| table.corrupt(offset, "a trade's inline part is missing"))?)
                    }
                };
                let record = &mut page[at..at + RECORD_BYTES];
                trade_file::encode(id, &entry, position, inline.as_ref(), record)
                    .map_err(|reason| TradeError::BadRecord { seq: entry.created_at.seq(), reason })?;
            }
            Ok(None) => page[at..at + RECORD_BYTES].fill(0),
            Err(()) => {}
        }
    }
    Ok(())
}

/// A part of a checkpoint's writes to the table: runs of consecutive pages (first page, pages),
/// and the pages of those runs to read before they are written.
#[derive(Debug, PartialEq)]
struct WriteGroup {
    runs: Vec<(u64, u64)>,
    to_read: Vec<u64>,
}

/// Splits the write of `pages` (ascending, distinct) into runs of consecutive pages, at most
/// [`PAGES_PER_RUN`] each, and the runs into groups that read at most [`PAGES_READ_HELD`]
/// pages (`needs_read`) between them: the pages read are held until their group is written,
/// so a checkpoint of trades changed far apart holds a group's pages, not one per trade.
fn plan_writes(pages: &[u64], needs_read: impl Fn(u64) -> bool) -> Vec<WriteGroup> {
    let mut groups = Vec::new();
    let mut group = WriteGroup { runs: Vec::new(), to_read: Vec::new() };
    let mut at = 0;
    while at < pages.len() {
        let first = pages[at];
        let mut end = at + 1;
        while end < pages.len() && pages[end] == pages[end - 1] + 1 && pages[end] - first < PAGES_PER_RUN {
            end += 1;
        }
        let reads: Vec<u64> = pages[at..end].iter().copied().filter(|&page| needs_read(page)).collect();
        if !group.runs.is_empty() && group.to_read.len() + reads.len() > PAGES_READ_HELD {
            groups.push(std::mem::replace(&mut group, WriteGroup { runs: Vec::new(), to_read: Vec::new() }));
        }
        group.runs.push((first, (end - at) as u64));
        group.to_read.extend(reads);
        at = end;
    }
    if !group.runs.is_empty() {
        groups.push(group);
    }
    groups
}

/// A record's created part must lie in the store as the checkpoint left it.
pub(crate) fn check_part<D: Disk>(
    table: &TradeFile<D>,
    counter: u64,
    entry: &TradeEntry,
    parts_len: u64,
) -> Result<(), TradeError> {
    match entry.created_at {
        CreatedAt::Stored(part) if part.offset.checked_add(u64::from(part.len)).is_some_and(|end| end <= parts_len) => {
            Ok(())
        }
        CreatedAt::Table(_) => Ok(()),
        _ => {
            Err(table
                .corrupt(trade_file::file_offset(counter), "a trade record points past the store of created parts"))
        }
    }
}

/// The record of trade `id` from the table: `None` if the table has no such trade (its counter
/// is past `dense_max`, or is another logical shard's). Every counter up to `dense_max` is a
/// trade, so a missing record there is damage; a record must point inside the `parts_len`
/// bytes of the store.
pub(crate) async fn read<D: Disk>(
    table: &TradeFile<D>,
    id: TradeId,
    dense_max: u64,
    parts_len: u64,
) -> Result<Option<TableRecord>, TradeError> {
    if id.counter() > dense_max {
        return Ok(None);
    }
    match table.read(id.counter()).await? {
        None => Err(table.corrupt(trade_file::file_offset(id.counter()), "no record for a trade the table holds")),
        Some(record) => {
            check_part(table, id.counter(), &record.entry, parts_len)?;
            Ok(Some(record).filter(|record| record.id == id))
        }
    }
}

/// Where a trade's durable state is, found by [`find`].
enum Found {
    InMemory(TradeEntry),
    /// Cold: its record in the table (`None`: no such trade).
    OnDisk(Option<TableRecord>),
}

/// The trade in memory, or, when it is cold, its record read from the table so that no
/// eviction overtook the read (the table may have been written under a read that one did).
/// Returns with no await after its last look at memory.
async fn find<D: Disk>(inner: &Inner<D>, id: TradeId) -> Result<Found, TradeError> {
    loop {
        let evictions = {
            let index = inner.index.borrow();
            if let Some(entry) = index.get(id) {
                return Ok(Found::InMemory(*entry));
            }
            if !index.trade_table().is_cold(id) {
                return Ok(Found::OnDisk(None));
            }
            index.trade_table().evictions()
        };
        let record = read_cold(inner, id).await?;
        let index = inner.index.borrow();
        // Brought back (and maybe changed) meanwhile: memory wins.
        if let Some(entry) = index.get(id) {
            return Ok(Found::InMemory(*entry));
        }
        if index.trade_table().evictions() == evictions {
            return Ok(Found::OnDisk(record));
        }
    }
}

/// The trade's durable entry: from memory, or from the table when it is cold. `None`: no such
/// trade.
pub(crate) async fn entry<D: Disk>(inner: &Inner<D>, id: TradeId) -> Result<Option<TradeEntry>, TradeError> {
    Ok(entry_and_part(inner, id).await?.map(|(entry, _)| entry))
}

/// [`entry`], with the trade's created part when the read of a cold trade's record brought it
/// (inline), so that such a trade is read whole with one device read.
pub(crate) async fn entry_and_part<D: Disk>(
    inner: &Inner<D>,
    id: TradeId,
) -> Result<Option<(TradeEntry, Option<CreatedPart>)>, TradeError> {
    Ok(match find(inner, id).await? {
        Found::InMemory(entry) => Some((entry, None)),
        Found::OnDisk(record) => record.map(|record| (record.entry, record.created_part())),
    })
}

/// The created part a trade's record holds inline, read from the table (the trade may be in
/// memory: its part is on disk all the same).
pub(crate) async fn read_inline_part<D: Disk>(inner: &Inner<D>, id: TradeId) -> Result<CreatedPart, TradeError> {
    let table = &inner.checkpoints.table;
    read_cold(inner, id)
        .await?
        .and_then(|record| record.created_part())
        .ok_or_else(|| table.corrupt(trade_file::file_offset(id.counter()), "a trade's inline part is missing"))
}

/// The id of the table's trade at `counter` (`None`: the table holds none there), for an
/// open that knows only the counter of a cold trade.
pub(crate) async fn id_at_counter<D: Disk>(inner: &Inner<D>, counter: u64) -> Result<Option<TradeId>, TradeError> {
    if counter > inner.index.borrow().trade_table().dense_max() {
        return Ok(None);
    }
    Ok(inner.checkpoints.table.read(counter).await?.map(|record| record.id))
}

/// Brings the trade back into memory (to be changed), unless it is there already or is no
/// trade. Returns whether it is in memory now.
pub(crate) async fn thaw<D: Disk>(inner: &Inner<D>, id: TradeId) -> Result<bool, TradeError> {
    match find(inner, id).await? {
        Found::InMemory(_) => Ok(true),
        Found::OnDisk(None) => Ok(false),
        Found::OnDisk(Some(record)) => {
            let mut index = inner.index.borrow_mut();
            index.trade_table_mut().thaw(id, record.entry);
            Ok(index.get(id).is_some())
        }
    }
}

async fn read_cold<D: Disk>(inner: &Inner<D>, id: TradeId) -> Result<Option<TableRecord>, TradeError> {
    let dense_max = inner.index.borrow().trade_table().dense_max();
    read(&inner.checkpoints.table, id, dense_max, inner.checkpoints.parts.len()).await
}

/// Reads the records of `ids` from the table (a window of reads at a time), for an open.
pub(crate) async fn read_many<D: Disk>(
    table: &TradeFile<D>,
    ids: &[TradeId],
    dense_max: u64,
    parts_len: u64,
) -> Result<Vec<Option<TableRecord>>, TradeError> {
    let mut records = Vec::with_capacity(ids.len());
    for window in ids.chunks(READS_IN_FLIGHT) {
        for read in join_all(window.iter().map(|&id| read(table, id, dense_max, parts_len))).await {
            records.push(read?);
        }
    }
    Ok(records)
}

/// What the durable settled trades settled to their merchants (the amount less refunds, which
/// only a trade paid from a balance has before it settles), summed per (merchant, currency):
/// the trades in memory as the call finds them, and those of the cold chunks as the table holds
/// them while it is read (a trade changed meanwhile may be counted in its state before or
/// after).
pub(crate) async fn settled_totals<D: Disk>(inner: &Inner<D>) -> Result<SettledTotals, TradeError> {
    let mut totals: HashMap<(u64, Currency), u128> = HashMap::new();
    let mut add = |entry: &TradeEntry| {
        if entry.lifecycle.status == TradeStatus::Settled {
            *totals.entry((entry.merchant_id, entry.currency)).or_default() += u128::from(entry.lifecycle.settles());
        }
    };
    // The memory side first, without holding a snapshot across the reads below (a snapshot
    // would make every write during the scan copy its chunk).
    let (cold, in_memory, dense_max) = {
        let index = inner.index.borrow();
        let trades = index.trade_table();
        trades.iter().for_each(|(_, entry)| add(entry));
        let cold: Vec<_> = trades.cold_ranges().collect();
        // A cold chunk's trade is in memory only thawed: those few, not every cold counter.
        let in_memory: std::collections::HashSet<u64> = trades.thawed_counters().collect();
        (cold, in_memory, trades.dense_max())
    };
    for range in cold {
        let counters = range.start.max(1)..range.end.min(dense_max + 1);
        scan(
            &inner.checkpoints.table,
            counters,
            |c| in_memory.contains(&c),
            |_, record| {
                add(&record.entry);
                Ok(())
            },
        )
        .await?;
    }
    Ok(totals.into_iter().collect())
}

/// Reads the trades' states of `counters` from the table, a run of pages at a time, and calls
/// `each` with every one, but for the counters `skip` names. Every counter must have its record.
async fn scan<D: Disk>(
    table: &TradeFile<D>,
    counters: std::ops::Range<u64>,
    skip: impl Fn(u64) -> bool,
    mut each: impl FnMut(u64, TableState) -> Result<(), TradeError>,
) -> Result<(), TradeError> {
    scan_states(table, counters, |c, state| {
        if skip(c) {
            return Ok(());
        }
        match state {
            Some(state) => each(c, state),
            None => Err(table.corrupt(trade_file::file_offset(c), "no record for a trade the table holds")),
        }
    })
    .await
}

/// Reads the trades' states of `counters` from the table, a run of pages at a time, and calls
/// `each` with every counter's (`None`: no record there). The next run's read is in flight
/// while a run is decoded.
pub(crate) async fn scan_states<D: Disk>(
    table: &TradeFile<D>,
    counters: std::ops::Range<u64>,
    mut each: impl FnMut(u64, Option<TableState>) -> Result<(), TradeError>,
) -> Result<(), TradeError> {
    // A run from counter `first`: its first page, its pages, the counter after it.
    let run_of = |first: u64| {
        let first_page = first / RECORDS_PER_PAGE;
        let last_page = ((counters.end - 1) / RECORDS_PER_PAGE).min(first_page + PAGES_PER_RUN - 1);
        (first_page, last_page - first_page + 1, ((last_page + 1) * RECORDS_PER_PAGE).min(counters.end))
    };
    let read_run = |(first_page, pages, _): (u64, u64, u64)| table.read_pages_as_read(first_page, pages as usize);
    if counters.is_empty() {
        return Ok(());
    }
    let (mut first_counter, mut run) = (counters.start, run_of(counters.start));
    let mut reading = start(read_run(run)).await;
    loop {
        let (first_page, _, run_end) = run;
        let bytes = reading.finish().await?;
        let next = (run_end < counters.end).then(|| run_of(run_end));
        // Sent to the device now, the next run's read completes while this one decodes.
        let next_read = match next {
            Some(next) => Some(start(read_run(next)).await),
            None => None,
        };
        for c in first_counter..run_end {
            let page_at = ((c / RECORDS_PER_PAGE - first_page) as usize) * trade_file::page_bytes();
            // Past the end of the file: no record.
            let state = match bytes.get(page_at..page_at + trade_file::page_bytes()) {
                Some(page) => trade_file::state_in_page(c, page)
                    .map_err(|reason| table.corrupt(trade_file::file_offset(c), reason))?,
                None => None,
            };
            each(c, state)?;
        }
        drop(bytes);
        crate::turns::take_turn().await;
        match (next, next_read) {
            (Some(next), Some(read)) => {
                (first_counter, run) = (run_end, next);
                reading = read;
            }
            _ => return Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pages_of(groups: &[WriteGroup]) -> Vec<u64> {
        groups.iter().flat_map(|group| group.runs.iter().flat_map(|&(first, count)| first..first + count)).collect()
    }

    #[test]
    fn a_checkpoint_of_pages_far_apart_holds_a_group_of_reads_at_a_time() {
        // Every other page, each to read: runs of one page, groups of PAGES_READ_HELD reads.
        let pages: Vec<u64> = (0..1_000).map(|n| 2 * n).collect();
        let groups = plan_writes(&pages, |_| true);
        assert_eq!(pages_of(&groups), pages, "every page written once, in order");
        assert!(groups.iter().all(|group| group.to_read.len() <= PAGES_READ_HELD), "{:?}", groups.len());
        assert_eq!(groups.len(), 1_000usize.div_ceil(PAGES_READ_HELD));
        for group in &groups {
            let in_runs: Vec<u64> = group.runs.iter().map(|&(first, _)| first).collect();
            assert_eq!(group.to_read, in_runs, "a group reads its own runs' pages");
        }
    }

    #[test]
    fn consecutive_pages_make_runs_and_pages_needing_no_read_one_group() {
        let pages: Vec<u64> = (10..10 + 3 * PAGES_PER_RUN).chain([5_000, 5_001]).collect();
        let groups = plan_writes(&pages, |_| false);
        assert_eq!(groups.len(), 1);
        assert_eq!(
            groups[0].runs,
            vec![
                (10, PAGES_PER_RUN),
                (10 + PAGES_PER_RUN, PAGES_PER_RUN),
                (10 + 2 * PAGES_PER_RUN, PAGES_PER_RUN),
                (5_000, 2)
            ]
        );
        assert!(groups[0].to_read.is_empty());
        // Some pages of each run to read: no group holds more than its share, and runs stay whole.
        let groups = plan_writes(&pages, |page| page % 3 == 0);
        assert_eq!(pages_of(&groups), pages);
        assert!(groups.len() > 1 && groups.iter().all(|group| group.to_read.len() <= PAGES_READ_HELD));
        assert!(plan_writes(&[], |_| true).is_empty());
    }
}
