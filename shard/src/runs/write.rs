//! Writing run files: a run of given entries ([`Run::write`]) and the merge of several runs into
//! one ([`merge`]), both streaming through the one writer here, a megabyte per write.
//!
//! A run file is complete and durable (fdatasync) before a `Run` for it is returned, but its
//! name is not: the caller syncs the directory once for the files it made, before it lists them
//! anywhere (a checkpoint). A write that fails removes the file it made, so a store never keeps
//! half a run under a run's name; a crash can still leave one, which no checkpoint lists.

use std::cell::RefCell;
use std::collections::BinaryHeap;
use std::rc::Rc;

use tradeshard_wal::disk::{Disk, DiskFile, WriteBuf};

use super::fences::{Fences, Page};
use super::format::{check_block, key_at, value_at, Encoder, Tail, BLOCK};
use super::{corrupt, io, FilterState, KeysAge, Run, Shape, Value};
use crate::error::TradeError;
use crate::turns::{take_turn, ITEMS_PER_TURN};

/// Bytes written at once.
const WRITE_BYTES: usize = 1 << 20;
/// Blocks of each run a merge reads at once (256 KiB).
const MERGE_READ_BLOCKS: u64 = 64;

/// A run file being written: the encoder and the bytes it made that are not written yet.
struct RunWriter<D: Disk> {
    sink: Sink<D>,
    encoder: Encoder,
}

/// The file of a run being written, and its bytes not written yet.
struct Sink<D: Disk> {
    disk: D,
    name: String,
    file: D::File,
    out: Vec<u8>,
    /// Bytes of the file written so far.
    written: u64,
}

impl<D: Disk> RunWriter<D> {
    /// Creates the file of run `id` (replacing a file of that name) of values of `value_bytes`,
    /// its Bloom filter sized for `capacity` entries.
    async fn create(
        disk: &D,
        prefix: &str,
        id: u64,
        level: u32,
        capacity: u64,
        value_bytes: usize,
    ) -> Result<RunWriter<D>, TradeError> {
        let name = Run::<D>::file_name(prefix, id);
        let encoder =
            Encoder::new(id, level, capacity, value_bytes).map_err(|reason| corrupt(disk, &name, 0, reason))?;
        let file = match disk.create_for_fill(&name).await {
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                disk.remove(&name).await.map_err(|e| io(disk, &name, "remove", e))?;
                disk.create_for_fill(&name).await
            }
            created => created,
        };
        let file = file.map_err(|e| io(disk, &name, "create", e))?;
        let sink = Sink { disk: disk.clone(), name, file, out: Vec::with_capacity(WRITE_BYTES), written: 0 };
        Ok(RunWriter { sink, encoder })
    }

    async fn push(&mut self, key: u128, value: &Value) -> Result<(), TradeError> {
        let at = self.sink.offset();
        self.encoder.push(key, value, &mut self.sink.out).map_err(|reason| self.sink.corrupt(at, reason))?;
        if self.sink.out.len() >= WRITE_BYTES {
            self.sink.flush().await?;
        }
        Ok(())
    }

    /// Writes the rest of the file (the last block, the index section, the footer) and syncs
    /// it; on failure removes it.
    async fn finish(self) -> Result<Run<D>, TradeError> {
        let RunWriter { mut sink, encoder } = self;
        let at = sink.offset();
        let written = match encoder.finish(&mut sink.out) {
            Ok(mut tail) => sink.write_tail(&mut tail).await.map(|()| tail.into_parts()),
            Err(reason) => Err(sink.corrupt(at, reason)),
        };
        match written {
            Ok((footer, bloom, fences)) => {
                let Sink { disk, name, file, .. } = sink;
                let (bloom, fences) = (RefCell::new(FilterState::Held(bloom)), RefCell::new(Fences::Held(fences)));
                Ok(Run { disk, name, file, footer, bloom, fences })
            }
            Err(e) => {
                sink.discard().await;
                Err(e)
            }
        }
    }

    /// Removes the file after a failure.
    async fn discard(self) {
        self.sink.discard().await;
    }
}

impl<D: Disk> Sink<D> {
    /// The offset in the file of the next byte the encoder makes.
    fn offset(&self) -> u64 {
        self.written + self.out.len() as u64
    }

    /// Writes the whole blocks of `out`, a megabyte at a time, yielding between writes.
    async fn flush(&mut self) -> Result<(), TradeError> {
        let whole = self.out.len() / BLOCK * BLOCK;
        let mut done = 0;
        while done < whole {
            let len = (whole - done).min(WRITE_BYTES);
            let mut buf = self.file.alloc(len);
            buf.bytes_mut().copy_from_slice(&self.out[done..done + len]);
            let wrote = self.file.write_at(buf, self.written).await.map_err(|e| self.io("write", e))?;
            if wrote != len {
                let short = std::io::Error::new(std::io::ErrorKind::WriteZero, "short write");
                return Err(self.io("write", short));
            }
            self.written += len as u64;
            done += len;
            crate::turns::take_turn().await;
        }
        self.out.drain(..whole);
        Ok(())
    }

    /// Writes the index section and the footer after the data blocks, then syncs the file.
    async fn write_tail(&mut self, tail: &mut Tail) -> Result<(), TradeError> {
        while !tail.write_to(&mut self.out, WRITE_BYTES) {
            self.flush().await?;
        }
        self.flush().await?;
        if !self.out.is_empty() {
            return Err(self.corrupt(self.written, "a run file not of whole blocks"));
        }
        self.file.fdatasync().await.map_err(|e| self.io("fdatasync", e))
    }

    /// Removes the file after a failure. The removal itself may fail (the disk that failed the
    /// write may fail it too): the first failure is the one reported, and a file left behind
    /// is one no checkpoint lists.
    async fn discard(self) {
        drop(self.file);
        let _ = self.disk.remove(&self.name).await;
    }

    fn io(&self, op: &'static str, source: std::io::Error) -> TradeError {
        io(&self.disk, &self.name, op, source)
    }

    fn corrupt(&self, offset: u64, reason: &'static str) -> TradeError {
        corrupt(&self.disk, &self.name, offset, reason)
    }
}

impl<D: Disk> Run<D> {
    /// Writes run `id` of the store `prefix` at `level`: `count` entries of the `shape`'s
    /// values, keys strictly ascending (an error otherwise, and the file is removed; so is it
    /// if the entries are not `count`, which sizes the Bloom filter as the shape's filter
    /// says); `age` is its keys' age, for its footer. The file is synced, its directory is not.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn write(
        disk: &D,
        prefix: &str,
        id: u64,
        level: u32,
        age: KeysAge,
        shape: Shape,
        count: u64,
        entries: impl IntoIterator<Item = (u128, Value)>,
    ) -> Result<Run<D>, TradeError> {
        if count == 0 {
            return Err(corrupt(disk, &Run::<D>::file_name(prefix, id), 0, "an empty run"));
        }
        let capacity = shape.filter.capacity(count);
        let mut writer = RunWriter::create(disk, prefix, id, level, capacity, shape.value_bytes).await?;
        writer.encoder.set_age(age);
        let mut filled = Ok(());
        for (n, (key, value)) in entries.into_iter().enumerate() {
            // The encoding, the filter and the values the caller makes are a checkpoint's CPU:
            // the writes alone yield once a megabyte of output, many thousands of entries,
            // too long to hold the shard's requests.
            if n > 0 && n.is_multiple_of(ITEMS_PER_TURN) {
                take_turn().await;
            }
            if writer.encoder.entries() == count {
                filled = Err(writer.sink.corrupt(writer.sink.offset(), "a run given more entries than its count"));
                break;
            }
            filled = writer.push(key, &value).await;
            if filled.is_err() {
                break;
            }
        }
        if filled.is_ok() && writer.encoder.entries() != count {
            filled = Err(writer.sink.corrupt(writer.sink.offset(), "a run given fewer entries than its count"));
        }
        match filled {
            Ok(()) => writer.finish().await,
            Err(e) => {
                writer.discard().await;
                Err(e)
            }
        }
    }
}

/// Merges `runs` (oldest first, of the `shape`'s values) into run `id` at `level` of the store
/// `prefix`: a streaming k-way merge reading each run in order, every block checked; of a key
/// in several runs the newest run's value is kept. Written like [`Run::write`] (synced,
/// directory not). Memory: a read buffer per run, the write buffer and the new run's Bloom
/// filter and fence keys.
pub(crate) async fn merge<D: Disk>(
    disk: &D,
    prefix: &str,
    id: u64,
    level: u32,
    shape: Shape,
    runs: &[Rc<Run<D>>],
) -> Result<Run<D>, TradeError> {
    if runs.is_empty() {
        return Err(corrupt(disk, &Run::<D>::file_name(prefix, id), 0, "a merge of no runs"));
    }
    if let Some(other) = runs.iter().find(|run| run.value_bytes() != shape.value_bytes) {
        return Err(other.corrupt(0, "a run of values of another size than its store's"));
    }
    // Sized for every input entry: keys in several runs make the filter a little larger than
    // needed, never too small.
    let capacity = runs.iter().fold(0u64, |sum, run| sum.saturating_add(run.entries()));
    let (capacity, value_bytes) = (shape.filter.capacity(capacity), shape.value_bytes);
    let mut writer = RunWriter::create(disk, prefix, id, level, capacity, value_bytes).await?;
    writer.encoder.set_age(runs.iter().map(|run| run.age()).fold(runs[0].age(), KeysAge::max));
    match merge_into(&mut writer, runs).await {
        Ok(()) => writer.finish().await,
        Err(e) => {
            writer.discard().await;
            Err(e)
        }
    }
}

/// The smallest key not yet taken from one run; among equal keys the newest run's comes first.
struct Head {
    key: u128,
    run: usize,
    value: Value,
}

impl Ord for Head {
    /// Reversed for the max-heap: the smallest key is the greatest, then the newest run.
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        other.key.cmp(&self.key).then(self.run.cmp(&other.run))
    }
}

impl PartialOrd for Head {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Head {
    fn eq(&self, other: &Self) -> bool {
        (self.key, self.run) == (other.key, other.run)
    }
}

impl Eq for Head {}

async fn merge_into<D: Disk>(writer: &mut RunWriter<D>, runs: &[Rc<Run<D>>]) -> Result<(), TradeError> {
    let mut cursors: Vec<Cursor<D>> = runs.iter().map(|run| Cursor::new(run.clone())).collect();
    let mut heap = BinaryHeap::with_capacity(runs.len());
    for (run, cursor) in cursors.iter_mut().enumerate() {
        if let Some((key, value)) = cursor.next().await? {
            heap.push(Head { key, run, value });
        }
    }
    let mut pushed = 0usize;
    while let Some(Head { key, run, value }) = heap.pop() {
        // Turns given back as `Run::write` gives them: the reads yield only when a run's
        // buffer runs out.
        pushed += 1;
        if pushed.is_multiple_of(ITEMS_PER_TURN) {
            take_turn().await;
        }
        // The same key in older runs: an older value, skipped.
        while heap.peek().is_some_and(|head| head.key == key) {
            if let Some(older) = heap.pop() {
                if let Some((key, value)) = cursors[older.run].next().await? {
                    heap.push(Head { key, run: older.run, value });
                }
            }
        }
        writer.push(key, &value).await?;
        if let Some((key, value)) = cursors[run].next().await? {
            heap.push(Head { key, run, value });
        }
    }
    Ok(())
}

/// Reads one run's entries in order, `MERGE_READ_BLOCKS` blocks per read, every block checked
/// as a lookup checks it.
struct Cursor<D: Disk> {
    run: Rc<Run<D>>,
    buf: Option<<D::File as DiskFile>::ReadBuf>,
    /// The block `buf` starts with, and how many it holds.
    buf_first: u64,
    buf_blocks: u64,
    /// The block being read (`None` before the first), its entries and their count, and the
    /// next entry.
    block: Option<u64>,
    entries: Vec<u8>,
    count: usize,
    next: usize,
    /// The page of fence keys read last, where the run's are left on disk (`fences.rs`).
    page: Option<Page>,
}

impl<D: Disk> Cursor<D> {
    fn new(run: Rc<Run<D>>) -> Cursor<D> {
        let (entries, page) = (Vec::new(), None);
        Cursor { run, buf: None, buf_first: 0, buf_blocks: 0, block: None, entries, count: 0, next: 0, page }
    }

    /// The next entry of the run, or `None` after its last.
    async fn next(&mut self) -> Result<Option<(u128, Value)>, TradeError> {
        let run = self.run.clone();
        while self.next == self.count {
            let number = self.block.map_or(0, |block| block + 1);
            if number >= run.footer.data_blocks {
                return Ok(None);
            }
            if number >= self.buf_first + self.buf_blocks {
                let blocks = (run.footer.data_blocks - number).min(MERGE_READ_BLOCKS);
                let (offset, len) = (number * BLOCK as u64, blocks as usize * BLOCK);
                let bytes = run.file.read_at(offset, len).await.map_err(|e| io(&run.disk, &run.name, "read", e))?;
                if bytes.len() != len {
                    return Err(run.corrupt(offset + bytes.len() as u64, "a run file cut short"));
                }
                (self.buf, self.buf_first, self.buf_blocks) = (Some(bytes), number, blocks);
                // Keys in many runs are written once: a merge may read much between writes.
                crate::turns::take_turn().await;
            }
            let bounds = run.bounds(number, &mut self.page, None).await?;
            let block = self.block_bytes(number);
            let entries =
                check_block(block, &run.footer, bounds).map_err(|reason| run.corrupt(number * BLOCK as u64, reason))?;
            self.count = entries.count;
            (self.block, self.entries, self.next) = (Some(number), entries.bytes, 0);
        }
        let number = self.block.unwrap_or(0);
        let entry_bytes = run.footer.entry_bytes;
        let (key, value) =
            (key_at(&self.entries, self.next, entry_bytes), value_at(&self.entries, self.next, entry_bytes));
        self.next += 1;
        // A filter that would answer "absent" for a key of its run makes lookups miss it:
        // refused here rather than carried on.
        if !run.may_hold(key) {
            return Err(run.corrupt(number * BLOCK as u64, "a run key its Bloom filter does not hold"));
        }
        Ok(Some((key, value)))
    }

    /// The bytes of block `number`, which `buf` holds.
    fn block_bytes(&self, number: u64) -> &[u8] {
        let at = (number - self.buf_first) as usize * BLOCK;
        self.buf.as_deref().map_or(&[][..], |bytes| &bytes[at..at + BLOCK])
    }
}
