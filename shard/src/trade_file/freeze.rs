//! The table's frozen blocks on disk (`frozen.rs` has their bytes): finding them at an open,
//! freezing old blocks at a checkpoint (copies written and synced, then the index, then the
//! table's pages punched out), and reading a frozen record back from its block's copy.

use std::cell::Cell;
use std::rc::Rc;

use tradeshard_wal::disk::{Disk, DiskFile, WriteBuf};

use super::frozen::{
    self, block_of, FrozenBlock, BLOCK_RAW_BYTES, BLOCK_RECORDS, ENTRY_BYTES, FROZEN_INDEX_NAME, FROZEN_NAME,
};
use super::frozen_index::ENTRIES_PER_PAGE;
use super::{corrupt_at, frozen_io, io, TradeFile, PAGE_BYTES, RECORDS_PER_PAGE, RECORD_BYTES};
use crate::error::TradeError;

/// Blocks frozen with one write of their copies (1 MiB of the table read at a time).
const BLOCKS_PER_WRITE: u64 = 64;
/// Bytes of the frozen blocks' index read at a time at an open.
const INDEX_READ_BYTES: usize = 1 << 20;

/// The files of the frozen blocks: the copies and their index.
pub(super) struct FrozenFiles<D: Disk> {
    copies: D::File,
    pub(super) index: D::File,
    /// Where the next copies are written: past every byte written before, so that no entry
    /// an open may take ever points at bytes written again.
    copies_end: Cell<u64>,
}

/// What a checkpoint's freeze did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Frozen {
    /// Blocks frozen and punched out of the table.
    pub blocks: u64,
    /// Bytes of their copies.
    pub copy_bytes: u64,
}

impl<D: Disk> TradeFile<D> {
    /// Fills the zero records of frozen blocks in `bytes` (pages read from page `first`) from
    /// their copies.
    pub(super) async fn fill_from_frozen(&self, first: u64, bytes: &mut [u8]) -> Result<(), TradeError> {
        let first_counter = first * RECORDS_PER_PAGE;
        let records = (bytes.len() / RECORD_BYTES) as u64;
        let frozen = self.frozen_len();
        if records == 0 || block_of(first_counter) >= frozen {
            return Ok(());
        }
        let last_block = block_of(first_counter + records - 1).min(frozen - 1);
        for block in block_of(first_counter)..=last_block {
            let counters =
                (block * BLOCK_RECORDS).max(first_counter)..((block + 1) * BLOCK_RECORDS).min(first_counter + records);
            let at = |c: u64| (c - first_counter) as usize * RECORD_BYTES;
            let zero = |c: u64, bytes: &[u8]| bytes[at(c)..at(c) + RECORD_BYTES].iter().all(|&b| b == 0);
            if !counters.clone().any(|c| zero(c, bytes)) {
                continue;
            }
            let Some(copy) = self.frozen_block(block).await? else { continue };
            for c in counters {
                if zero(c, bytes) {
                    let record = frozen::record_of(&copy, (c - block * BLOCK_RECORDS) as usize);
                    bytes[at(c)..at(c) + RECORD_BYTES].copy_from_slice(&record);
                }
            }
        }
        Ok(())
    }

    /// Copies read since open.
    pub(crate) fn frozen_reads(&self) -> u64 {
        self.frozen_reads.get()
    }

    /// Block `block`'s copy, checked (`frozen::record_of` takes its records out), `None`
    /// when it is not frozen.
    pub(super) async fn frozen_block(&self, block: u64) -> Result<Option<frozen::CheckedCopy>, TradeError> {
        let Some(entry) = self.frozen_entry(block).await? else { return Ok(None) };
        let files = self.frozen_files.borrow().clone().expect("a frozen block has its files");
        self.frozen_reads.set(self.frozen_reads.get() + 1);
        let copy = files
            .copies
            .read_at(entry.offset, entry.len as usize)
            .await
            .map_err(|e| frozen_io(&self.disk, FROZEN_NAME, "read", e))?;
        frozen::decompress(block, &entry, &copy)
            .map(Some)
            .map_err(|reason| corrupt_at(&self.disk, FROZEN_NAME, entry.offset, reason))
    }

    /// Loads the index of the frozen blocks from the page of block `at_least` on, taking every
    /// leading entry that checks; the checkpoint loaded says at least `at_least` are there
    /// (fewer is damage). The entries below are read when asked for (`frozen_index.rs`).
    pub(crate) async fn load_frozen(&self, at_least: u64) -> Result<(), TradeError> {
        let (copies, index) = match (self.disk.open(FROZEN_NAME).await, self.disk.open(FROZEN_INDEX_NAME).await) {
            (Ok(copies), Ok(index)) => (copies, index),
            _ if at_least == 0 => return Ok(()),
            _ => {
                return Err(corrupt_at(
                    &self.disk,
                    FROZEN_INDEX_NAME,
                    0,
                    "the frozen blocks a checkpoint counts are missing",
                ))
            }
        };
        let copies_len = copies.size().await.map_err(|e| frozen_io(&self.disk, FROZEN_NAME, "stat", e))?;
        let index_len = index.size().await.map_err(|e| frozen_io(&self.disk, FROZEN_INDEX_NAME, "stat", e))?;
        let start = at_least / ENTRIES_PER_PAGE * ENTRIES_PER_PAGE;
        if index_len < at_least * ENTRY_BYTES as u64 {
            return Err(corrupt_at(
                &self.disk,
                FROZEN_INDEX_NAME,
                index_len,
                "the frozen blocks' index is shorter than its checkpoint counts",
            ));
        }
        let mut blocks = Vec::new();
        let mut at = start * ENTRY_BYTES as u64;
        'read: while at < index_len {
            let len = (index_len - at).min(INDEX_READ_BYTES as u64) as usize;
            let read = index.read_at(at, len).await.map_err(|e| frozen_io(&self.disk, FROZEN_INDEX_NAME, "read", e))?;
            for bytes in read.chunks_exact(ENTRY_BYTES) {
                let block = start + blocks.len() as u64;
                match frozen::decode_entry(block, bytes) {
                    Some(entry) if entry.offset + u64::from(entry.len) <= copies_len => blocks.push(entry),
                    _ => break 'read,
                }
            }
            if read.len() < len {
                break;
            }
            at += len as u64;
        }
        if start + (blocks.len() as u64) < at_least {
            let offset = (start + blocks.len() as u64) * ENTRY_BYTES as u64;
            return Err(corrupt_at(
                &self.disk,
                FROZEN_INDEX_NAME,
                offset,
                "a frozen block's index entry is damaged or missing",
            ));
        }
        self.set_frozen(start, blocks);
        // The checkpoint punched the blocks it counts before it was written; those frozen after
        // it, by a checkpoint that did not complete, may not be.
        self.punched.set(at_least);
        let copies_end = copies_len.next_multiple_of(PAGE_BYTES as u64);
        *self.frozen_files.borrow_mut() =
            Some(Rc::new(FrozenFiles { copies, index, copies_end: Cell::new(copies_end) }));
        Ok(())
    }

    /// Freezes the blocks from the first not frozen up to block `upto` (at most `max` of them):
    /// their pages as the table holds them now are compressed into copies, the copies and
    /// their index entries are made durable, and the pages are punched out of the table. No
    /// write of the table may come between the reads here and the punch (the checkpointer,
    /// its only writer, calls this between its own writes).
    pub(crate) async fn freeze(&self, upto: u64, max: u64) -> Result<Frozen, TradeError> {
        self.punch_leftovers().await?;
        let from = self.frozen_len();
        let to = upto.min(from.saturating_add(max));
        if to <= from {
            return Ok(Frozen::default());
        }
        let files = self.frozen_files_made().await?;
        // A copy must not hold a record a crash could still take from the table's page.
        self.sync().await?;
        let copies_io = |op, e| frozen_io(&self.disk, FROZEN_NAME, op, e);
        let mut entries = Vec::with_capacity((to - from) as usize);
        let mut copy_bytes = 0u64;
        let pages_per_block = BLOCK_RAW_BYTES / PAGE_BYTES;
        let mut block = from;
        while block < to {
            let batch = (to - block).min(BLOCKS_PER_WRITE);
            let raw = self.read_pages(block * pages_per_block as u64, batch as usize * pages_per_block).await?;
            let mut out = Vec::new();
            let at = files.copies_end.get();
            for (n, block_raw) in raw.chunks_exact(BLOCK_RAW_BYTES).enumerate() {
                let (copy, checksum) = frozen::compress(block + n as u64, block_raw);
                entries.push(FrozenBlock { offset: at + out.len() as u64, len: copy.len() as u32, checksum });
                out.extend_from_slice(&copy);
            }
            copy_bytes += out.len() as u64;
            let padded = out.len().next_multiple_of(PAGE_BYTES);
            let mut buf = files.copies.alloc(padded);
            buf.bytes_mut()[..out.len()].copy_from_slice(&out);
            buf.bytes_mut()[out.len()..].fill(0);
            // Past whatever happens to this write, the next goes after it.
            files.copies_end.set(at + padded as u64);
            let done = files.copies.write_at(buf, at).await.map_err(|e| copies_io("write", e))?;
            if done != padded {
                return Err(copies_io("write", std::io::Error::new(std::io::ErrorKind::WriteZero, "short write")));
            }
            block += batch;
            crate::turns::take_turn().await;
        }
        files.copies.fdatasync().await.map_err(|e| copies_io("fdatasync", e))?;
        self.write_index(&files, from, &entries).await?;
        // The copies are durable: reads may take them from here on, and the table's pages go.
        self.frozen.borrow_mut().extend(&entries);
        let (start, end) = (from * BLOCK_RAW_BYTES as u64, to * BLOCK_RAW_BYTES as u64);
        self.file.punch_hole(start, end - start).await.map_err(|e| io(&self.disk, "punch", e))?;
        // Durable before the checkpoint that counts these blocks: an open takes the blocks a
        // checkpoint counts as punched, and a punch, like a write, may not outlive a crash
        // before a sync.
        self.sync().await?;
        self.punched.set(to);
        Ok(Frozen { blocks: to - from, copy_bytes })
    }

    /// Punches out of the table what an earlier freeze left in it: a stop or a failed punch
    /// between a freeze's index and its punch leaves the frozen blocks' pages allocated, and
    /// nothing else would give them back. Each page of the frozen blocks from `punched` on
    /// whose every record is zero or the one its block's copy holds is punched (reads find the
    /// same records in the copy); a page written since its freeze (a changed trade) differs
    /// and stays. Only the checkpointer writes the table, and it calls this between its own
    /// writes, so no write comes between the comparison and the punch.
    async fn punch_leftovers(&self) -> Result<(), TradeError> {
        let (from, to) = (self.punched.get(), self.frozen_len());
        let pages_per_block = BLOCK_RAW_BYTES / PAGE_BYTES;
        let punched_before = self.leftover_pages_punched.get();
        for block in from..to {
            let at = block * BLOCK_RAW_BYTES as u64;
            let raw = self.file.read_at(at, BLOCK_RAW_BYTES).await.map_err(|e| io(&self.disk, "read", e))?;
            let Some(copy) = self.frozen_block(block).await? else { break };
            for page in 0..pages_per_block {
                // Past the file's end (a short read) the table holds zeros.
                let bytes = raw.get(page * PAGE_BYTES..(page + 1) * PAGE_BYTES).unwrap_or(&[]);
                let records = bytes.chunks_exact(RECORD_BYTES).enumerate();
                let first = page * RECORDS_PER_PAGE as usize;
                let as_copied = records
                    .clone()
                    .all(|(n, record)| record.iter().all(|&b| b == 0) || record == frozen::record_of(&copy, first + n));
                if as_copied && bytes.iter().any(|&b| b != 0) {
                    let page_at = at + (page * PAGE_BYTES) as u64;
                    self.file.punch_hole(page_at, PAGE_BYTES as u64).await.map_err(|e| io(&self.disk, "punch", e))?;
                    self.leftover_pages_punched.set(self.leftover_pages_punched.get() + 1);
                }
            }
            crate::turns::take_turn().await;
        }
        if self.leftover_pages_punched.get() > punched_before {
            self.sync().await?;
        }
        self.punched.set(to);
        Ok(())
    }

    /// Pages of frozen blocks that an earlier freeze left in the table and a later one gave
    /// back, since open.
    pub(crate) fn leftover_pages_punched(&self) -> u64 {
        self.leftover_pages_punched.get()
    }

    /// Writes the index entries of the blocks from `from` (the pages they fall in, with the
    /// entries before them as memory holds them) and syncs the index.
    async fn write_index(&self, files: &FrozenFiles<D>, from: u64, entries: &[FrozenBlock]) -> Result<(), TradeError> {
        let index_io = |op, e| frozen_io(&self.disk, FROZEN_INDEX_NAME, op, e);
        let per_page = (PAGE_BYTES / ENTRY_BYTES) as u64;
        let first_page = from / per_page;
        let first_in_page = first_page * per_page;
        let end = from + entries.len() as u64;
        let pages = (end - first_in_page).div_ceil(per_page) as usize;
        let mut buf = files.index.alloc(pages * PAGE_BYTES);
        let bytes = buf.bytes_mut();
        bytes.fill(0);
        {
            let index = self.frozen.borrow();
            let held = index.tail_before(from);
            for block in first_in_page..end {
                let entry = match block < from {
                    true => held[(block - first_in_page) as usize],
                    false => entries[(block - from) as usize],
                };
                let at = (block - first_in_page) as usize * ENTRY_BYTES;
                bytes[at..at + ENTRY_BYTES].copy_from_slice(&frozen::encode_entry(block, &entry));
            }
        }
        let done = files.index.write_at(buf, first_page * PAGE_BYTES as u64).await.map_err(|e| index_io("write", e))?;
        if done != pages * PAGE_BYTES {
            return Err(index_io("write", std::io::Error::new(std::io::ErrorKind::WriteZero, "short write")));
        }
        files.index.fdatasync().await.map_err(|e| index_io("fdatasync", e))
    }

    /// The frozen blocks' files, made (and the directory synced) if absent.
    async fn frozen_files_made(&self) -> Result<Rc<FrozenFiles<D>>, TradeError> {
        if let Some(files) = self.frozen_files.borrow().clone() {
            return Ok(files);
        }
        let copies = crate::files::open_or_create(&self.disk, FROZEN_NAME).await?;
        let index = crate::files::open_or_create(&self.disk, FROZEN_INDEX_NAME).await?;
        let copies_len = copies.size().await.map_err(|e| frozen_io(&self.disk, FROZEN_NAME, "stat", e))?;
        let end = Cell::new(copies_len.next_multiple_of(PAGE_BYTES as u64));
        let files = Rc::new(FrozenFiles { copies, index, copies_end: end });
        *self.frozen_files.borrow_mut() = Some(files.clone());
        Ok(files)
    }
}
