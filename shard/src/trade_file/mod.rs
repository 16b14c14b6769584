//! The table of trades on disk, `trades.table`: every trade's state as of a checkpoint, so that
//! a trade can leave memory and be read back with one device read.
//!
//! A shard's trade ids have dense counters (`trade.rs`), so a trade's place is computed, not
//! looked up: record `counter` is the `counter % 4`th 128-byte record of 512-byte sector
//! `counter / 4`. A record holds the trade's state and, where they fit (most do), its creation
//! time, order number and memo, so that a trade that left memory is read whole with one device
//! read; a trade whose order number and memo do not fit points at its `Created` record in the
//! store of created parts instead (`parts.rs`), a second read. A record never straddles a sector,
//! so a write torn at a sector boundary leaves each record either as it was or as written,
//! never half of each; the checksum (seeded with the counter, so a record in the wrong place
//! does not pass) finds a record damaged otherwise.
//!
//! Each record carries its *version*: the position of the checkpoint that wrote it; it holds the
//! effect of every log record below that position. A checkpoint writes the trades changed
//! since the last one before its own file (`checkpointer.rs`), so a record is never older than
//! the latest checkpoint says; it can be newer, when a later checkpoint failed after writing
//! the table, and an open skips the log records a record already holds (`index.rs`). The
//! layout is in `docs/FORMAT.md`.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use tradeshard_wal::disk::{Disk, DiskFile, WriteBuf};
use tradeshard_wal::BLOCK_BYTES;

use crate::created::CreatedPart;
use crate::currency::Currency;
use crate::error::{LogError, TradeError};
use crate::index::{CreatedAt, StoredPart, TablePart, TradeEntry};
use crate::lifecycle::Lifecycle;
use crate::trade::TradeId;
use freeze::FrozenFiles;
use frozen::{block_of, BLOCK_RECORDS};
use frozen_index::FrozenIndex;

mod freeze;
pub(crate) mod frozen;
mod frozen_index;

/// The table's file name in the shard's directory.
pub(crate) const TABLE_NAME: &str = "trades.table";
/// Bytes of one record.
pub const RECORD_BYTES: usize = 128;
const SECTOR_BYTES: usize = 512;
const RECORDS_PER_SECTOR: u64 = (SECTOR_BYTES / RECORD_BYTES) as u64;
const PAGE_BYTES: usize = BLOCK_BYTES as usize;
/// Records in one page (the unit of a write).
pub(crate) const RECORDS_PER_PAGE: u64 = RECORDS_PER_SECTOR * (PAGE_BYTES / SECTOR_BYTES) as u64;
/// Pages written at once.
const PAGES_PER_WRITE: usize = 256;
/// Where the inline part starts: its order number's length u8, its memo's length u8, the
/// order number, the memo, zeros.
const INLINE_AT: usize = 72;
/// Bytes of the inline part.
pub(crate) const INLINE_BYTES: usize = 52;
const CHECKSUM_AT: usize = INLINE_AT + INLINE_BYTES;

const _: () = assert!(
    PAGE_BYTES.is_multiple_of(SECTOR_BYTES)
        && SECTOR_BYTES.is_multiple_of(RECORD_BYTES)
        && CHECKSUM_AT + 4 == RECORD_BYTES
);

/// A trade's order number and memo as its record holds them inline.
pub(crate) type InlinePart = [u8; INLINE_BYTES];

/// A trade as the table holds it: its entry, the record's version, and the inline part when
/// the entry's created part is in the record (`CreatedAt::Table`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TableRecord {
    pub id: TradeId,
    pub entry: TradeEntry,
    pub version: u64,
    pub inline: Option<InlinePart>,
}

impl TableRecord {
    /// The trade's created part when the record holds it.
    pub(crate) fn created_part(&self) -> Option<CreatedPart> {
        match (self.entry.created_at, &self.inline) {
            (CreatedAt::Table(part), Some(inline)) => Some(part_of(inline, part.created_ms)),
            _ => None,
        }
    }
}

/// The inline part of an order number and a memo, or `None` when they do not fit.
pub(crate) fn inline_part(merchant_order_no: &str, memo: &str) -> Option<InlinePart> {
    let (order, memo) = (merchant_order_no.as_bytes(), memo.as_bytes());
    if 2 + order.len() + memo.len() > INLINE_BYTES {
        return None;
    }
    let mut inline = [0u8; INLINE_BYTES];
    inline[0] = order.len() as u8;
    inline[1] = memo.len() as u8;
    inline[2..2 + order.len()].copy_from_slice(order);
    inline[2 + order.len()..2 + order.len() + memo.len()].copy_from_slice(memo);
    Some(inline)
}

/// The order number and memo of an inline part, checked: lengths inside it, UTF-8, zeros
/// after them.
fn inline_fields(inline: &InlinePart) -> Result<(&str, &str), &'static str> {
    let (order_len, memo_len) = (inline[0] as usize, inline[1] as usize);
    let end = 2 + order_len + memo_len;
    if end > INLINE_BYTES || inline[end..].iter().any(|&b| b != 0) {
        return Err("a trade record's inline part out of bounds");
    }
    let text = |bytes| std::str::from_utf8(bytes).map_err(|_| "a trade record's inline part is not UTF-8");
    Ok((text(&inline[2..2 + order_len])?, text(&inline[2 + order_len..end])?))
}

/// The created part an inline part holds (checked when its record was decoded).
fn part_of(inline: &InlinePart, created_ms: u64) -> CreatedPart {
    let (order, memo) = inline_fields(inline).expect("checked when its record was decoded");
    CreatedPart::new(created_ms, order, memo)
}

/// The page that holds `counter`'s record, and where in it the record starts.
pub(crate) fn place(counter: u64) -> (u64, usize) {
    let page = counter / RECORDS_PER_PAGE;
    let in_page = counter % RECORDS_PER_PAGE;
    let at =
        (in_page / RECORDS_PER_SECTOR) as usize * SECTOR_BYTES + (in_page % RECORDS_PER_SECTOR) as usize * RECORD_BYTES;
    (page, at)
}

fn checksum(counter: u64, bytes: &[u8]) -> u32 {
    xxhash_rust::xxh3::xxh3_64_with_seed(&bytes[..CHECKSUM_AT], counter) as u32
}

/// Writes the record of trade `id` into `out` (`RECORD_BYTES` long). Its created part must be
/// in the store, or inline (`inline`, given exactly then): the table outlives the log.
pub(crate) fn encode(
    id: TradeId,
    entry: &TradeEntry,
    version: u64,
    inline: Option<&InlinePart>,
    out: &mut [u8],
) -> Result<(), &'static str> {
    // An inline part says so with a part length of 0, and keeps its time where a stored
    // part's offset goes.
    let (part_len, part_offset, part_seq) = match (entry.created_at, inline) {
        (CreatedAt::Stored(part), None) if part.len > 0 => {
            (u16::try_from(part.len).map_err(|_| "a created part longer than a record can say")?, part.offset, part.seq)
        }
        (CreatedAt::Table(part), Some(inline)) => {
            inline_fields(inline)?;
            (0, part.created_ms, part.seq)
        }
        _ => return Err("a trade's created part is neither stored nor inline"),
    };
    let out = &mut out[..RECORD_BYTES];
    out[0..2].copy_from_slice(&entry.logical_shard.to_le_bytes());
    out[2] = entry.lifecycle.status_byte();
    out[3..6].copy_from_slice(&entry.currency.bytes());
    out[6..8].copy_from_slice(&part_len.to_le_bytes());
    let words = [
        entry.user_id,
        entry.merchant_id,
        entry.lifecycle.amount,
        entry.lifecycle.refunded,
        entry.updated_ms,
        part_offset,
        part_seq,
        version,
    ];
    for (n, word) in words.iter().enumerate() {
        out[8 + 8 * n..16 + 8 * n].copy_from_slice(&word.to_le_bytes());
    }
    match inline {
        Some(inline) => out[INLINE_AT..CHECKSUM_AT].copy_from_slice(inline),
        None => out[INLINE_AT..CHECKSUM_AT].fill(0),
    }
    let sum = checksum(id.counter(), out);
    out[CHECKSUM_AT..CHECKSUM_AT + 4].copy_from_slice(&sum.to_le_bytes());
    Ok(())
}

/// The record of `counter` in `bytes` (`RECORD_BYTES` long): `None` if it was never written
/// (all zeros).
pub fn decode(counter: u64, bytes: &[u8]) -> Result<Option<TableRecord>, &'static str> {
    let record = decode_leaving_inline(counter, bytes)?;
    if let Some(inline) = record.as_ref().and_then(|record| record.inline.as_ref()) {
        inline_fields(inline)?;
    }
    Ok(record)
}

/// A trade's state as its record holds it, without its order number and memo: what an open
/// loads and a scan sums, which never read the inline part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TableState {
    pub id: TradeId,
    pub entry: TradeEntry,
    pub version: u64,
}

/// [`decode`] for the trade's state alone: the checksum and every field of the state are
/// checked, the inline part is not read (whoever reads it decodes the record with
/// [`decode`]). Checking its text was a quarter of loading a table into memory.
pub(crate) fn decode_state(counter: u64, bytes: &[u8]) -> Result<Option<TableState>, &'static str> {
    Ok(decode_leaving_inline(counter, bytes)?.map(|record| TableState {
        id: record.id,
        entry: record.entry,
        version: record.version,
    }))
}

/// [`decode`] but for the check of the inline part's lengths and text.
fn decode_leaving_inline(counter: u64, bytes: &[u8]) -> Result<Option<TableRecord>, &'static str> {
    let bytes = bytes.get(..RECORD_BYTES).ok_or("a trade record cut short")?;
    if bytes.iter().all(|&b| b == 0) {
        return Ok(None);
    }
    let word = |n: usize| u64::from_le_bytes(bytes[8 + 8 * n..16 + 8 * n].try_into().expect("8 bytes"));
    let stored_sum = u32::from_le_bytes(bytes[CHECKSUM_AT..CHECKSUM_AT + 4].try_into().expect("4 bytes"));
    if stored_sum != checksum(counter, bytes) {
        return Err("trade record checksum mismatch");
    }
    let logical_shard = u16::from_le_bytes([bytes[0], bytes[1]]);
    let (status, from_balance) = Lifecycle::of_status_byte(bytes[2]).ok_or("trade record with an unknown status")?;
    let currency =
        Currency::from_bytes([bytes[3], bytes[4], bytes[5]]).ok_or("trade record with an unknown currency")?;
    let part_len = u16::from_le_bytes([bytes[6], bytes[7]]);
    let (amount, refunded) = (word(2), word(3));
    if counter == 0 || counter >= 1 << crate::trade::COUNTER_BITS || refunded > amount {
        return Err("trade record out of bounds");
    }
    let inline_bytes: InlinePart = bytes[INLINE_AT..CHECKSUM_AT].try_into().expect("the inline part's bytes");
    let (created_at, inline) = match part_len {
        0 => (CreatedAt::Table(TablePart { seq: word(6), created_ms: word(5) }), Some(inline_bytes)),
        len if inline_bytes.iter().all(|&b| b == 0) => {
            (CreatedAt::Stored(StoredPart { offset: word(5), seq: word(6), len: u32::from(len) }), None)
        }
        _ => return Err("a trade record with both a stored and an inline part"),
    };
    let id = TradeId::new(u32::from(logical_shard), counter);
    let entry = TradeEntry {
        logical_shard,
        user_id: word(0),
        merchant_id: word(1),
        lifecycle: Lifecycle { status, amount, refunded, from_balance },
        currency,
        updated_ms: word(4),
        created_at,
    };
    Ok(Some(TableRecord { id, entry, version: word(7), inline }))
}

/// The table file of one shard.
pub(crate) struct TradeFile<D: Disk> {
    disk: D,
    file: D::File,
    /// Point reads of one record since open (`read`), and pages read whole (`read_pages`: a
    /// checkpoint keeping the inline parts of pages it rewrites, chunks of trades brought back).
    reads: Cell<u64>,
    page_reads: Cell<u64>,
    /// The index of the frozen blocks' copies (`frozen.rs`), entry `b` for block `b`: its
    /// last page and the pages read lately (`frozen_index.rs`).
    frozen: RefCell<FrozenIndex>,
    /// Their files, once made or found.
    frozen_files: RefCell<Option<Rc<FrozenFiles<D>>>>,
    /// Copies read since open.
    frozen_reads: Cell<u64>,
    /// Frozen blocks below this are punched out of the table (or written again since); those
    /// above it, up to `frozen_len()`, may still have their pages (`freeze.rs`).
    punched: Cell<u64>,
    /// Pages such leftovers gave back since open.
    leftover_pages_punched: Cell<u64>,
}

impl<D: Disk> TradeFile<D> {
    fn with_file(disk: &D, file: D::File, frozen_cache_bytes: u64) -> TradeFile<D> {
        TradeFile {
            disk: disk.clone(),
            file,
            reads: Default::default(),
            page_reads: Default::default(),
            frozen: RefCell::new(FrozenIndex::new(frozen_cache_bytes)),
            frozen_files: Default::default(),
            frozen_reads: Default::default(),
            punched: Default::default(),
            leftover_pages_punched: Default::default(),
        }
    }

    /// Opens the table, creating it if absent; the pages of its frozen blocks' index read
    /// lately are kept in `frozen_cache_bytes` of memory.
    pub(crate) async fn open(disk: &D, frozen_cache_bytes: u64) -> Result<TradeFile<D>, TradeError> {
        let file = crate::files::open_or_create(disk, TABLE_NAME).await?;
        Ok(Self::with_file(disk, file, frozen_cache_bytes))
    }

    /// Opens the table if it exists, changing nothing.
    pub(crate) async fn open_existing(disk: &D, frozen_cache_bytes: u64) -> Result<Option<TradeFile<D>>, TradeError> {
        match disk.open(TABLE_NAME).await {
            Ok(file) => Ok(Some(Self::with_file(disk, file, frozen_cache_bytes))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(disk, "open", e)),
        }
    }

    /// Refuses a table too short to hold the record of `counter_max`, the last trade a
    /// checkpoint says it holds: memory lays out a chunk for every trade up to it before any
    /// is read, so a counter that damage made huge (its checksum made again) must not reach
    /// that layout.
    pub(crate) async fn check_holds(&self, counter_max: u64) -> Result<(), TradeError> {
        if counter_max == 0 {
            return Ok(());
        }
        let needed = (place(counter_max).0 + 1).saturating_mul(PAGE_BYTES as u64);
        let size = self.file.size().await.map_err(|e| io(&self.disk, "stat", e))?;
        if size < needed {
            return Err(self.corrupt(size, "the table of trades is shorter than its checkpoint says"));
        }
        Ok(())
    }

    /// The record of `counter`, with one read; a second when the table has no record there
    /// and the counter's block is frozen (the first then reads a hole, which the file system
    /// answers without the device).
    pub(crate) async fn read(&self, counter: u64) -> Result<Option<TableRecord>, TradeError> {
        let (page, at) = place(counter);
        let sector_at = at / SECTOR_BYTES * SECTOR_BYTES;
        let offset = page * PAGE_BYTES as u64 + sector_at as u64;
        self.reads.set(self.reads.get() + 1);
        let sector = self.file.read_at(offset, SECTOR_BYTES).await.map_err(|e| io(&self.disk, "read", e))?;
        let Some(bytes) = sector.get(at - sector_at..at - sector_at + RECORD_BYTES) else { return Ok(None) };
        let offset = offset + (at - sector_at) as u64;
        if bytes.iter().all(|&b| b == 0) {
            // Looked at after the read: a block is in the index before its pages are punched.
            if let Some(copy) = self.frozen_block(block_of(counter)).await? {
                let record = frozen::record_of(&copy, (counter % BLOCK_RECORDS) as usize);
                return decode(counter, &record).map_err(|reason| self.corrupt(offset, reason));
            }
        }
        decode(counter, bytes).map_err(|reason| self.corrupt(offset, reason))
    }

    /// Point reads of one record since open.
    pub(crate) fn reads(&self) -> u64 {
        self.reads.get()
    }

    /// Pages read whole since open.
    pub(crate) fn page_reads(&self) -> u64 {
        self.page_reads.get()
    }

    /// Up to `count` pages from page `first`: fewer past the end of the file.
    pub(crate) async fn read_pages_as_read(&self, first: u64, count: usize) -> Result<Vec<u8>, TradeError> {
        self.page_reads.set(self.page_reads.get() + count as u64);
        let read = self
            .file
            .read_at(first * PAGE_BYTES as u64, count * PAGE_BYTES)
            .await
            .map_err(|e| io(&self.disk, "read", e))?;
        let mut bytes = read.to_vec();
        drop(read);
        self.fill_from_frozen(first, &mut bytes).await?;
        Ok(bytes)
    }

    /// `count` pages from page `first`, zeros past the end of the file.
    pub(crate) async fn read_pages(&self, first: u64, count: usize) -> Result<Vec<u8>, TradeError> {
        let mut bytes = self.read_pages_as_read(first, count).await?;
        bytes.resize(count * PAGE_BYTES, 0);
        Ok(bytes)
    }

    /// Writes whole pages starting at page `first` (`bytes` a multiple of a page long), a run
    /// of pages per write; durable after [`sync`](Self::sync).
    pub(crate) async fn write_pages(&self, first: u64, bytes: &[u8]) -> Result<(), TradeError> {
        debug_assert_eq!(bytes.len() % PAGE_BYTES, 0);
        for (n, run) in bytes.chunks(PAGES_PER_WRITE * PAGE_BYTES).enumerate() {
            let mut buf = self.file.alloc(run.len());
            buf.bytes_mut().copy_from_slice(run);
            let at = (first + (n * PAGES_PER_WRITE) as u64) * PAGE_BYTES as u64;
            let done = self.file.write_at(buf, at).await.map_err(|e| io(&self.disk, "write", e))?;
            if done != run.len() {
                let short = std::io::Error::new(std::io::ErrorKind::WriteZero, "short write");
                return Err(io(&self.disk, "write", short));
            }
        }
        Ok(())
    }

    pub(crate) async fn sync(&self) -> Result<(), TradeError> {
        self.file.fdatasync().await.map_err(|e| io(&self.disk, "fdatasync", e))
    }

    /// The error for a damaged record at `offset`.
    pub(crate) fn corrupt(&self, offset: u64, reason: &'static str) -> TradeError {
        TradeError::Log(LogError::Corruption { path: self.disk.path_of(TABLE_NAME), offset, reason })
    }
}

fn io(disk: &impl Disk, op: &'static str, source: std::io::Error) -> TradeError {
    frozen_io(disk, TABLE_NAME, op, source)
}

fn frozen_io(disk: &impl Disk, name: &str, op: &'static str, source: std::io::Error) -> TradeError {
    TradeError::Log(LogError::io(op, disk.path_of(name), source))
}

fn corrupt_at(disk: &impl Disk, name: &str, offset: u64, reason: &'static str) -> TradeError {
    TradeError::Log(LogError::Corruption { path: disk.path_of(name), offset, reason })
}

/// Decodes the record of `counter` out of its page (`page` is `place(counter).0`'s bytes).
pub(crate) fn record_in_page(counter: u64, page: &[u8]) -> Result<Option<TableRecord>, &'static str> {
    let (_, at) = place(counter);
    decode(counter, &page[at..at + RECORD_BYTES])
}

/// [`record_in_page`] for the trade's state alone ([`decode_state`]).
pub(crate) fn state_in_page(counter: u64, page: &[u8]) -> Result<Option<TableState>, &'static str> {
    let (_, at) = place(counter);
    decode_state(counter, &page[at..at + RECORD_BYTES])
}

/// Where in the file the record of `counter` starts (for error reports).
pub fn file_offset(counter: u64) -> u64 {
    let (page, at) = place(counter);
    page * PAGE_BYTES as u64 + at as u64
}

/// Bytes of one page.
pub(crate) const fn page_bytes() -> usize {
    PAGE_BYTES
}

#[cfg(any(test, feature = "testing"))]
mod fuzzing;
#[cfg(any(test, feature = "testing"))]
pub use frozen::{decode_for_fuzzing as decode_frozen_for_fuzzing, sample_for_fuzzing as sample_frozen_for_fuzzing};
#[cfg(any(test, feature = "testing"))]
pub use fuzzing::{decode_for_fuzzing, inline_sample_for_fuzzing, sample_for_fuzzing};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trade::TradeStatus;

    fn entry(status: TradeStatus, refunded: u64) -> TradeEntry {
        crate::entries::sample_entry(status, refunded)
    }

    #[test]
    fn a_record_reads_back_only_at_its_own_counter() {
        let id = TradeId::new(7, 1_234);
        let mut bytes = [0u8; RECORD_BYTES];
        encode(id, &entry(TradeStatus::Refunded, 300), 99, None, &mut bytes).unwrap();
        let record = decode(1_234, &bytes).unwrap().unwrap();
        assert_eq!(record, TableRecord { id, entry: entry(TradeStatus::Refunded, 300), version: 99, inline: None });
        assert!(decode(1_235, &bytes).is_err(), "a record copied to another place does not pass");
        assert_eq!(decode(1_234, &[0u8; RECORD_BYTES]).unwrap(), None, "a place never written");
    }

    #[test]
    fn every_flipped_bit_is_found() {
        let mut stored = [0u8; RECORD_BYTES];
        encode(TradeId::new(7, 3), &entry(TradeStatus::Paid, 0), 1, None, &mut stored).unwrap();
        let inline = inline_sample_for_fuzzing();
        let counter = u64::from_le_bytes(inline[..8].try_into().unwrap());
        for (counter, bytes) in [(3, &stored[..]), (counter, &inline[8..])] {
            for bit in 0..RECORD_BYTES * 8 {
                let mut damaged = bytes.to_vec();
                damaged[bit / 8] ^= 1 << (bit % 8);
                assert!(decode(counter, &damaged).is_err(), "bit {bit}");
                assert!(decode_state(counter, &damaged).is_err(), "bit {bit}, the state alone");
            }
        }
    }

    #[test]
    fn an_inline_part_reads_back_with_the_state() {
        let id = TradeId::new(7, 9);
        let mut trade = entry(TradeStatus::Settled, 0);
        trade.created_at = CreatedAt::Table(TablePart { seq: 4, created_ms: 123 });
        let longest_that_fits = "X".repeat(INLINE_BYTES - 2 - "memo".len());
        for (order, memo) in [("ORD-1", ""), ("", ""), (longest_that_fits.as_str(), "memo"), ("单号-7", "备注")] {
            let inline = inline_part(order, memo).unwrap();
            let mut bytes = [0u8; RECORD_BYTES];
            encode(id, &trade, 5, Some(&inline), &mut bytes).unwrap();
            let record = decode(9, &bytes).unwrap().unwrap();
            assert_eq!(record, TableRecord { id, entry: trade, version: 5, inline: Some(inline) });
            let part = record.created_part().unwrap();
            assert_eq!((part.created_ms(), part.merchant_order_no(), part.memo()), (123, order, memo));
        }
        assert_eq!(inline_part(&"X".repeat(INLINE_BYTES - 1), ""), None, "too long to fit");
        let stored = TableRecord { id, entry: entry(TradeStatus::Paid, 0), version: 1, inline: None };
        assert_eq!(stored.created_part(), None, "a stored part is read from the store");
        let mut bytes = [0u8; RECORD_BYTES];
        let inline = inline_part("ORD-1", "").unwrap();
        assert!(encode(id, &trade, 5, None, &mut bytes).is_err(), "an inline part must be given");
        assert!(encode(id, &stored.entry, 5, Some(&inline), &mut bytes).is_err(), "not both");
    }

    #[test]
    fn records_never_straddle_a_sector() {
        for counter in 0..10 * RECORDS_PER_PAGE {
            let (page, at) = place(counter);
            assert_eq!(page, counter / RECORDS_PER_PAGE);
            assert_eq!(at / SECTOR_BYTES, (at + RECORD_BYTES - 1) / SECTOR_BYTES, "counter {counter}");
            assert!(at + RECORD_BYTES <= PAGE_BYTES);
        }
        let places: std::collections::HashSet<_> = (0..RECORDS_PER_PAGE).map(|c| place(c).1).collect();
        assert_eq!(places.len() as u64, RECORDS_PER_PAGE, "no two records share a place");
    }

    proptest::proptest! {
        /// Any bytes (and the sample with bytes changed) decode to a record, no record or a
        /// defect, never a panic; a record that decodes encodes back to its bytes.
        #[test]
        fn any_bytes_decode_without_panic(
            noise in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..100),
            edits in proptest::collection::vec((0usize..8 + RECORD_BYTES, proptest::prelude::any::<u8>()), 0..3),
            inline in proptest::prelude::any::<bool>(),
        ) {
            let _ = decode_for_fuzzing(&noise);
            let mut sample = if inline { inline_sample_for_fuzzing() } else { sample_for_fuzzing() };
            for (at, byte) in edits {
                sample[at] = byte;
            }
            if let Ok(Some((read, again))) = decode_for_fuzzing(&sample) {
                proptest::prop_assert_eq!(read, again);
            }
        }
    }

    #[test]
    fn the_fuzzing_samples_decode_and_encode_again_the_same() {
        for sample in [sample_for_fuzzing(), inline_sample_for_fuzzing()] {
            let (read, again) = decode_for_fuzzing(&sample).unwrap().unwrap();
            assert_eq!(read, again);
        }
    }

    #[test]
    fn a_part_too_long_or_in_the_log_is_refused() {
        let mut bytes = [0u8; RECORD_BYTES];
        let mut long = entry(TradeStatus::Paid, 0);
        long.created_at = CreatedAt::Stored(StoredPart { seq: 1, offset: 0, len: 70_000 });
        assert!(encode(TradeId::new(7, 3), &long, 1, None, &mut bytes).is_err());
    }
}
