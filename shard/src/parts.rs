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
/// two lengths and its bytes) rather than as a whole inline part per trade.
#[derive(Default)]
pub(crate) struct PlacedParts {
    places: IdMap<TradeId, Placed>,
    packed: Vec<u8>,
}

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
    pub(crate) fn stored(&mut self, id: TradeId, part: StoredPart) {
        self.places.insert(id, Placed::Stored(part));
    }

    /// Places the part inline if it fits; false if it does not (nothing placed).
    pub(crate) fn inline(&mut self, id: TradeId, part: TablePart, merchant_order_no: &str, memo: &str) -> bool {
        let Some(inline) = inline_part(merchant_order_no, memo) else { return false };
        let Ok(at) = u32::try_from(self.packed.len()) else { return false };
        self.packed.extend_from_slice(&inline[..2 + inline[0] as usize + inline[1] as usize]);
        self.places.insert(id, Placed::Table { part, at });
        true
    }

    /// Where trade `id`'s part went, and the part when inline.
    pub(crate) fn get(&self, id: TradeId) -> Option<(CreatedAt, Option<InlinePart>)> {
        Some(match *self.places.get(&id)? {
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

    /// Every trade placed, with where its part went.
    pub(crate) fn into_places(self) -> impl Iterator<Item = (TradeId, CreatedAt)> {
        self.places.into_iter().map(|(id, placed)| match placed {
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
    let mut placed = PlacedParts::default();
    let mut reader = inner.wal.reader(since)?;
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
