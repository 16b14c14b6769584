//! The store of created parts: the `Created` record (order number, memo, creation time) of
//! every trade whose order number and memo do not fit inline in its record of the table
//! (`trade_file.rs`), copied out of the log by a checkpoint, so that retention can remove the
//! segment it was written in while the trade lives on; and the checkpoint's choice, for each
//! new trade, of where its part goes ([`place_created_parts`]).
//!
//! One append-only file per shard, `created.parts`: entries back to back, each a 4-byte
//! length, an 8-byte checksum of the record and the record's bytes as the log held them. An
//! entry is read with one read of the blocks it covers. The file's valid length is what the
//! latest checkpoint says (`checkpoint.rs`): bytes after it are from a checkpoint that did not
//! complete, and the next one writes over them (a failed checkpoint rewinds the store). Appends
//! write whole blocks (direct I/O), so the partial block at the end is kept in memory and
//! written again with the next append.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use tradeshard_wal::disk::{Disk, DiskFile, WriteBuf};
use tradeshard_wal::BLOCK_BYTES;

use crate::error::{LogError, TradeError};
use crate::id_hash::IdMap;
use crate::index::{CreatedAt, ShardIndex, StoredPart, TablePart};
use crate::record::{RecordKind, TradeRecordView};
use crate::state::Inner;
use crate::system_record::LogRecord;
use crate::trade::TradeId;
use crate::trade_file::{inline_part, InlinePart, INLINE_BYTES};

/// The store's file name in the shard's directory.
pub(crate) const PARTS_NAME: &str = "created.parts";
/// Bytes in front of each record.
const ENTRY_HEADER_BYTES: usize = 12;
/// Bytes written at once.
const WRITE_CHUNK_BYTES: usize = 1 << 20;
/// No record of the store is longer (a `Created` record is at most a few hundred bytes).
const RECORD_BYTES_MAX: usize = 64 << 10;

fn io(disk: &impl Disk, op: &'static str, source: std::io::Error) -> TradeError {
    TradeError::Log(LogError::io(op, disk.path_of(PARTS_NAME), source))
}

/// The store of one shard (see the module's text).
pub(crate) struct PartsStore<D: Disk> {
    disk: D,
    file: Rc<D::File>,
    end: Cell<u64>,
    /// The bytes of the block `end` lies in, before `end`.
    tail: RefCell<Vec<u8>>,
    /// Reads of one entry since open (`read`).
    reads: Cell<u64>,
}

/// Where the store ended at some moment (see [`PartsStore::mark`]).
pub(crate) struct PartsMark {
    end: u64,
    tail: Vec<u8>,
}

/// Appends one record's entry to `out`; returns the entry's length.
pub(crate) fn encode_entry(record: &[u8], out: &mut Vec<u8>) -> u32 {
    out.extend_from_slice(&(record.len() as u32).to_le_bytes());
    out.extend_from_slice(&xxhash_rust::xxh3::xxh3_64(record).to_le_bytes());
    out.extend_from_slice(record);
    (ENTRY_HEADER_BYTES + record.len()) as u32
}

/// Checks, reading only, that the store holds the `len` bytes a checkpoint vouches for: a
/// missing or shorter store is damage, refused before anything is repaired or written.
pub(crate) async fn check_len<D: Disk>(disk: &D, len: u64) -> Result<(), TradeError> {
    if len == 0 {
        return Ok(());
    }
    let file = match disk.open(PARTS_NAME).await {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(corrupt(disk, 0, "the store of created parts a checkpoint points into is missing"))
        }
        Err(e) => return Err(io(disk, "open", e)),
    };
    let size = file.size().await.map_err(|e| io(disk, "stat", e))?;
    if size < len {
        return Err(corrupt(disk, size, "the store of created parts is shorter than its checkpoint says"));
    }
    Ok(())
}

impl<D: Disk> PartsStore<D> {
    /// Opens the store (created if absent) with `len` valid bytes.
    pub(crate) async fn open(disk: &D, len: u64) -> Result<PartsStore<D>, TradeError> {
        let file = crate::files::open_or_create(disk, PARTS_NAME).await?;
        let in_block = (len % BLOCK_BYTES) as usize;
        let mut tail = Vec::with_capacity(BLOCK_BYTES as usize);
        if in_block > 0 {
            let block =
                file.read_at(len - in_block as u64, BLOCK_BYTES as usize).await.map_err(|e| io(disk, "read", e))?;
            let held = block.get(..in_block).ok_or_else(|| corrupt(disk, len, "store cut short"))?;
            tail.extend_from_slice(held);
        }
        let (file, end, tail) = (Rc::new(file), Cell::new(len), RefCell::new(tail));
        Ok(PartsStore { disk: disk.clone(), file, end, tail, reads: Cell::new(0) })
    }

    /// Bytes of entries in the store.
    pub(crate) fn len(&self) -> u64 {
        self.end.get()
    }

    /// Where the store ends now, to [`rewind`](Self::rewind) to.
    pub(crate) fn mark(&self) -> PartsMark {
        PartsMark { end: self.end.get(), tail: self.tail.borrow().clone() }
    }

    /// Forgets the entries appended after `mark` (by a checkpoint that failed): the next
    /// append writes over them, so that the store never holds a record twice.
    pub(crate) fn rewind(&self, mark: PartsMark) {
        self.end.set(mark.end);
        *self.tail.borrow_mut() = mark.tail;
    }

    /// Writes `entries` (made by [`encode_entry`]) after the last entry; they are durable after
    /// [`sync`](Self::sync). Returns the offset the first one starts at.
    pub(crate) async fn append(&self, entries: &[u8]) -> Result<u64, TradeError> {
        let start = self.end.get();
        let block_start = start - self.tail.borrow().len() as u64;
        // The tail is replaced only once every write succeeded: a failed append leaves the
        // store as it was, and the next one writes the same blocks again.
        let mut data = self.tail.borrow().clone();
        data.extend_from_slice(entries);
        let mut written = 0;
        while written < data.len() {
            let chunk = &data[written..(written + WRITE_CHUNK_BYTES).min(data.len())];
            let len = chunk.len().div_ceil(BLOCK_BYTES as usize) * BLOCK_BYTES as usize;
            let mut buf = self.file.alloc(len);
            let bytes = buf.bytes_mut();
            bytes[..chunk.len()].copy_from_slice(chunk);
            bytes[chunk.len()..].fill(0);
            let at = block_start + written as u64;
            let done = self.file.write_at(buf, at).await.map_err(|e| io(&self.disk, "write", e))?;
            if done != len {
                let short = std::io::Error::new(std::io::ErrorKind::WriteZero, "short write");
                return Err(io(&self.disk, "write", short));
            }
            written += chunk.len();
        }
        let full_blocks = data.len() / BLOCK_BYTES as usize * BLOCK_BYTES as usize;
        data.drain(..full_blocks);
        *self.tail.borrow_mut() = data;
        self.end.set(start + entries.len() as u64);
        Ok(start)
    }

    /// Makes every entry appended durable.
    pub(crate) async fn sync(&self) -> Result<(), TradeError> {
        self.file.fdatasync().await.map_err(|e| io(&self.disk, "fdatasync", e))
    }

    /// Reads of one entry since open.
    pub(crate) fn reads(&self) -> u64 {
        self.reads.get()
    }

    /// The record of one entry, checked.
    pub(crate) async fn read(&self, part: StoredPart) -> Result<Vec<u8>, TradeError> {
        // A damaged record may name any offset and length: no sum may wrap, no read be larger
        // than an entry can be.
        let end = part.offset.checked_add(part.len as u64).filter(|&end| end <= self.end.get());
        let sized = (ENTRY_HEADER_BYTES..=ENTRY_HEADER_BYTES + RECORD_BYTES_MAX).contains(&(part.len as usize));
        let (Some(end), true) = (end, sized) else {
            return Err(corrupt(&self.disk, part.offset, "trade points past the store of created parts"));
        };
        let first_block = part.offset / BLOCK_BYTES * BLOCK_BYTES;
        let len = (end - first_block).div_ceil(BLOCK_BYTES) * BLOCK_BYTES;
        self.reads.set(self.reads.get() + 1);
        let blocks = self.file.read_at(first_block, len as usize).await.map_err(|e| io(&self.disk, "read", e))?;
        let entry = blocks
            .get((part.offset - first_block) as usize..(end - first_block) as usize)
            .ok_or_else(|| corrupt(&self.disk, part.offset, "store of created parts cut short"))?;
        match next_entry(entry) {
            Some(Ok((record, len))) if len == entry.len() => Ok(record.to_vec()),
            Some(Err(reason)) => Err(corrupt(&self.disk, part.offset, reason)),
            _ => Err(corrupt(&self.disk, part.offset, "created part of another length than its trade says")),
        }
    }
}

/// The entry at the start of `bytes`: `None` if `bytes` does not hold it whole yet; its record
/// and length, or why it is damaged.
#[allow(clippy::type_complexity)]
fn next_entry(bytes: &[u8]) -> Option<Result<(&[u8], usize), &'static str>> {
    let header = bytes.get(..ENTRY_HEADER_BYTES)?;
    let record_len = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes")) as usize;
    if record_len == 0 || record_len > RECORD_BYTES_MAX {
        return Some(Err("a store entry of an impossible length"));
    }
    let record = bytes.get(ENTRY_HEADER_BYTES..ENTRY_HEADER_BYTES + record_len)?;
    let checksum = u64::from_le_bytes(header[4..12].try_into().expect("8 bytes"));
    if xxhash_rust::xxh3::xxh3_64(record) != checksum {
        return Some(Err("store entry checksum mismatch"));
    }
    Some(Ok((record, ENTRY_HEADER_BYTES + record_len)))
}

fn corrupt(disk: &impl Disk, offset: u64, reason: &'static str) -> TradeError {
    TradeError::Log(LogError::Corruption { path: disk.path_of(PARTS_NAME), offset, reason })
}

/// Where a checkpoint put the created parts of the trades created since the one before: the
/// store of created parts, or inline in the trades' records of the table. A checkpoint may
/// place millions, so an inline part waits for the table's write packed in one buffer (its
/// two lengths and its bytes) rather than as a whole inline part per trade, and the places are
/// laid out by the trades' counters, which a shard issues one after another: the table's
/// writer asks for them page by page, in counter order, and reads them in sequence, where a
/// hash map's probes were a cache miss each (and its doublings, fresh pages). A trade whose
/// counter lies outside the range laid out (far from the others: an id the engine did not
/// issue, or a create written long after its counter was taken) goes to a map.
#[derive(Default)]
pub(crate) struct PlacedParts {
    /// The counter of `by_counter[0]`.
    first: u64,
    /// By counter from `first`: the trade placed, and where its part went.
    by_counter: Vec<Option<(TradeId, Placed)>>,
    /// Trades placed in `by_counter`.
    laid_out: usize,
    others: IdMap<TradeId, Placed>,
    packed: Vec<u8>,
}

/// Slots [`PlacedParts`] lays out below the first counter placed (a create that took its
/// counter earlier may be written later) and beyond the trades it holds: a bound on the memory
/// a log of sparse counters could make it take.
const SLOTS_SPARE: usize = 1 << 16;

#[derive(Clone, Copy)]
enum Placed {
    Stored(StoredPart),
    /// Inline, its packed bytes at `at` in `packed`.
    Table {
        part: TablePart,
        at: u32,
    },
}

impl PlacedParts {
    /// Places laid out by counter for about `expected` trades (the spare slots below the
    /// first one counted, so that the slots do not grow by doubling past them).
    fn with_expected(expected: usize) -> PlacedParts {
        PlacedParts { by_counter: Vec::with_capacity(expected + SLOTS_SPARE), ..PlacedParts::default() }
    }

    fn place(&mut self, id: TradeId, placed: Placed) {
        if self.by_counter.is_empty() {
            self.first = id.counter().saturating_sub(SLOTS_SPARE as u64);
        }
        let slot = id.counter().checked_sub(self.first).and_then(|slot| usize::try_from(slot).ok());
        // Laid out while the slots stay within twice the trades placed, and the spare.
        let room = 2 * (self.laid_out + 1) + 2 * SLOTS_SPARE;
        match slot.filter(|&slot| slot < room) {
            Some(slot) if self.by_counter.get(slot).is_none_or(|held| held.is_none_or(|(held, _)| held == id)) => {
                if slot >= self.by_counter.len() {
                    self.by_counter.resize(slot + 1, None);
                }
                self.laid_out += usize::from(self.by_counter[slot].is_none());
                self.by_counter[slot] = Some((id, placed));
                // Placed before while it was too far from the others to lay out.
                if !self.others.is_empty() {
                    self.others.remove(&id);
                }
            }
            // Far from the others, or another id of a counter laid out: not one this engine issued.
            _ => drop(self.others.insert(id, placed)),
        }
    }

    fn placed(&self, id: TradeId) -> Option<Placed> {
        let slot = id.counter().checked_sub(self.first).and_then(|slot| usize::try_from(slot).ok());
        match slot.and_then(|slot| self.by_counter.get(slot)).copied().flatten() {
            Some((held, placed)) if held == id => Some(placed),
            _ => self.others.get(&id).copied(),
        }
    }

    pub(crate) fn stored(&mut self, id: TradeId, part: StoredPart) {
        self.place(id, Placed::Stored(part));
    }

    /// Places the part inline if it fits; false if it does not (nothing placed).
    pub(crate) fn inline(&mut self, id: TradeId, part: TablePart, merchant_order_no: &str, memo: &str) -> bool {
        let Some(inline) = inline_part(merchant_order_no, memo) else { return false };
        let Ok(at) = u32::try_from(self.packed.len()) else { return false };
        self.packed.extend_from_slice(&inline[..2 + inline[0] as usize + inline[1] as usize]);
        self.place(id, Placed::Table { part, at });
        true
    }

    /// Where trade `id`'s part went, and the part when inline.
    pub(crate) fn get(&self, id: TradeId) -> Option<(CreatedAt, Option<InlinePart>)> {
        Some(match self.placed(id)? {
            Placed::Stored(part) => (CreatedAt::Stored(part), None),
            Placed::Table { part, at } => {
                let at = at as usize;
                let len = 2 + self.packed[at] as usize + self.packed[at + 1] as usize;
                let mut inline = [0u8; INLINE_BYTES];
                inline[..len].copy_from_slice(&self.packed[at..at + len]);
                (CreatedAt::Table(part), Some(inline))
            }
        })
    }

    /// Every trade placed, with where its part went: those laid out in counter order, then
    /// the others.
    pub(crate) fn into_places(self) -> impl Iterator<Item = (TradeId, CreatedAt)> {
        let laid_out = self.by_counter.into_iter().flatten();
        laid_out.chain(self.others).map(|(id, placed)| match placed {
            Placed::Stored(part) => (id, CreatedAt::Stored(part)),
            Placed::Table { part, .. } => (id, CreatedAt::Table(part)),
        })
    }
}

/// Places the `Created` records in `[since, position)`: inline in their trades' records of the
/// table where the order number and memo fit (written with the table), else copied to the
/// store of created parts, synced, a megabyte at a time. Scattered trades, which the checkpoint
/// file keeps rather than the table, always go to the store.
pub(crate) async fn place_created_parts<D: Disk>(
    inner: &Inner<D>,
    snapshot: &ShardIndex,
    since: u64,
    position: u64,
) -> Result<PlacedParts, TradeError> {
    const APPEND_BYTES: usize = 1 << 20;
    let parts = &inner.checkpoints.parts;
    let scattered: std::collections::HashSet<TradeId> = snapshot.trade_table().scattered().map(|(id, _)| id).collect();
    let mut entries = Vec::with_capacity(APPEND_BYTES + 4096);
    let mut reader = inner.wal.reader(since)?;
    // A trade created since the last checkpoint has an order key there.
    let mut placed = PlacedParts::with_expected(snapshot.recent_key_counts().0);
    while let Some((seq, record)) = reader.next().await? {
        if seq >= position {
            break;
        }
        if LogRecord::is_system(record) {
            continue;
        }
        let view = TradeRecordView::decode(record).map_err(|reason| TradeError::BadRecord { seq, reason })?;
        let Some(created) = view.created.as_ref().filter(|_| view.kind == RecordKind::Created) else { continue };
        let part = TablePart { seq, created_ms: view.at_ms };
        let inline = !scattered.contains(&view.trade_id)
            && placed.inline(view.trade_id, part, created.merchant_order_no, created.memo);
        if !inline {
            let offset = parts.len() + entries.len() as u64;
            let len = encode_entry(record, &mut entries);
            placed.stored(view.trade_id, StoredPart { seq, offset, len });
        }
        if entries.len() >= APPEND_BYTES {
            parts.append(&entries).await?;
            entries.clear();
        }
    }
    parts.append(&entries).await?;
    parts.sync().await?;
    Ok(placed)
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// Any bytes as the start of the store: an entry, not yet a whole one, or a defect;
        /// never a panic, and an entry never longer than the bytes.
        #[test]
        fn any_bytes_parse_without_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            if let Some(Ok((record, len))) = next_entry(&bytes) {
                proptest::prop_assert!(len <= bytes.len() && record.len() + ENTRY_HEADER_BYTES == len);
            }
        }
    }

    proptest::proptest! {
        /// Against a map: every trade placed reads back where its part went (the last place
        /// given), inline parts with their bytes, whatever the counters (near each other, a
        /// create written before one of a lower counter, far apart, one counter under two
        /// logical shards); the places come out once each, those laid out in counter order.
        #[test]
        fn places_read_back_as_a_map_holds_them(
            trades in proptest::collection::vec((0u32..3, 0u64..40, 0u64..4, proptest::prelude::any::<bool>()), 1..120),
        ) {
            let mut placed = PlacedParts::with_expected(8);
            let mut model: std::collections::HashMap<TradeId, (CreatedAt, Option<InlinePart>)> = Default::default();
            for (n, (logical, step, far, inline)) in trades.into_iter().enumerate() {
                // Counters from 100_000, most near each other, some far above or below.
                let counter = match far {
                    0 => 1 + n as u64 * 1_000_000,
                    1 => 100_000 - step,
                    _ => 100_000 + step,
                };
                let id = TradeId::new(logical, counter);
                let seq = n as u64;
                let order = format!("O-{n}");
                let at = match inline {
                    true => {
                        let part = TablePart { seq, created_ms: 7 };
                        proptest::prop_assert!(placed.inline(id, part, &order, "memo"));
                        (CreatedAt::Table(part), inline_part(&order, "memo"))
                    }
                    false => {
                        let part = StoredPart { seq, offset: seq * 100, len: 50 };
                        placed.stored(id, part);
                        (CreatedAt::Stored(part), None)
                    }
                };
                model.insert(id, at);
            }
            for (id, at) in &model {
                proptest::prop_assert_eq!(placed.get(*id), Some(*at));
            }
            proptest::prop_assert_eq!(placed.get(TradeId::new(5, 100_000)), None);
            let laid_out: Vec<u64> = placed.by_counter.iter().flatten().map(|(id, _)| id.counter()).collect();
            proptest::prop_assert!(laid_out.windows(2).all(|pair| pair[0] < pair[1]));
            let places: Vec<(TradeId, CreatedAt)> = placed.into_places().collect();
            proptest::prop_assert_eq!(places.len(), model.len());
            for (id, at) in places {
                proptest::prop_assert_eq!(Some(at), model.get(&id).map(|(at, _)| *at));
            }
        }
    }

    /// A trade placed while too far from the others to lay out, then placed again once the
    /// others reached it, comes out once, where it was placed last.
    #[test]
    fn a_trade_placed_again_once_laid_out_comes_out_once() {
        let mut placed = PlacedParts::with_expected(0);
        placed.stored(TradeId::new(0, 999), StoredPart { seq: 0, offset: 0, len: 50 });
        let far = TradeId::new(0, 1_000 + 4 * SLOTS_SPARE as u64);
        placed.stored(far, StoredPart { seq: 1, offset: 0, len: 50 });
        assert!(!placed.by_counter.iter().flatten().any(|(id, _)| *id == far), "too far to lay out at first");
        for counter in 1_000..1_000 + 2 * SLOTS_SPARE as u64 {
            placed.stored(TradeId::new(0, counter), StoredPart { seq: counter, offset: 0, len: 50 });
        }
        let last = StoredPart { seq: 2, offset: 100, len: 50 };
        placed.stored(far, last);
        assert!(placed.by_counter.iter().flatten().any(|(id, _)| *id == far), "laid out now");
        assert_eq!(placed.get(far), Some((CreatedAt::Stored(last), None)));
        let places: Vec<(TradeId, CreatedAt)> = placed.into_places().filter(|(id, _)| *id == far).collect();
        assert_eq!(places, vec![(far, CreatedAt::Stored(last))]);
    }

    #[test]
    fn entries_parse_back_one_after_another() {
        let mut bytes = Vec::new();
        let lens: Vec<u32> =
            [b"first".as_slice(), b"the second record"].iter().map(|r| encode_entry(r, &mut bytes)).collect();
        let (first, len) = next_entry(&bytes).unwrap().unwrap();
        assert_eq!((first, len as u32), (b"first".as_slice(), lens[0]));
        let (second, _) = next_entry(&bytes[len..]).unwrap().unwrap();
        assert_eq!(second, b"the second record");
        assert!(next_entry(&bytes[..len - 1]).is_none(), "an entry cut short is not whole yet");
        bytes[ENTRY_HEADER_BYTES] ^= 1;
        assert!(next_entry(&bytes).unwrap().is_err(), "a flipped bit is found");
    }
}
