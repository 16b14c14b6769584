//! The trade map of a shard, trade id → entry, laid out by the ids' counters, and which of
//! its trades are in memory.
//!
//! A shard issues trade ids with a counter that goes up by one (`TradeId::counter`), so its
//! trades' counters are dense: the table keeps each in slot `counter` of an array grown in
//! chunks (4,096 slots, fewer under a small memory budget). A lookup is an index, not a hash
//! probe, and growing never moves an entry: a hash map of millions of entries grew by
//! doubling, and its rehashes (with the page faults of each new table) were 13% of a shard's
//! CPU while ingesting (`BENCHMARKS.md`), while its slack cost a third more memory than the
//! entries. A slot is the entry alone, so an id whose counter is known but whose logical shard
//! differs is not found (an entry knows its logical shard).
//!
//! A chunk is *resident* or *cold*: a cold chunk's trades are in the table on disk
//! (`trade_file.rs`) and not in memory, except those brought back (*thawed*) to be changed,
//! which live in a small map until a checkpoint has written them. Every change marks its
//! counter *dirty*; a checkpoint takes the dirty counters, writes them to the table, and only
//! then may chunks and thawed trades without a change since leave memory ([`evict`]).
//!
//! Chunks are shared, not owned (`Rc`): a checkpoint takes a snapshot of the table by
//! cloning the list of chunks, and a write to a chunk the snapshot still holds copies that one
//! chunk first (`Rc::make_mut`), so a snapshot costs a pointer per chunk and a write during a
//! checkpoint at most one chunk's copy.
//!
//! Ids far from the chunks already made, and an id whose counter's slot is taken under another
//! logical shard (the engine issues neither; a log crafted by hand could hold them), go to a
//! hash map instead (*scattered*), always in memory and kept by the checkpoint itself, so that
//! no id can make the table allocate more than one chunk for one entry and the table stays a
//! map of whole ids. The chunks an open lays out go up to the highest counter in chunks, which
//! a checkpoint records apart from the highest counter of any id.
//!
//! [`evict`]: TradeTable::evict

use std::collections::HashSet;
use std::rc::Rc;

use crate::id_hash::IdMap;
use crate::trade::TradeId;

/// Slots per chunk when the memory budget allows (2^12).
pub const CHUNK_BITS_MAX: u32 = 12;
/// Fewest slots per chunk (2^3).
pub const CHUNK_BITS_MIN: u32 = 3;

/// What the table keeps per trade: it must know its trade's logical shard (the counter is
/// the slot), so that a slot holds the entry and nothing more.
pub trait Entry {
    fn logical_shard(&self) -> u32;
}

/// A slot of the table: `Option<V>`, which costs nothing beside `V` when `V` has a niche
/// (the index asserts it for its entry).
pub type Slot<V> = Option<V>;

/// The counters changed since a checkpoint took them: a bit per slot, per chunk.
#[derive(Debug, Default, Clone)]
pub struct Dirty {
    bits: u32,
    chunks: Vec<(usize, Box<[u64]>)>,
}

impl Dirty {
    /// The dirty counters, ascending.
    pub fn counters(&self) -> impl Iterator<Item = u64> + '_ {
        let bits = self.bits;
        let mut chunks: Vec<&(usize, Box<[u64]>)> = self.chunks.iter().collect();
        chunks.sort_unstable_by_key(|(chunk, _)| *chunk);
        chunks.into_iter().flat_map(move |(chunk, words)| {
            words.iter().enumerate().flat_map(move |(w, word)| {
                (0..64)
                    .filter(move |b| word & (1 << b) != 0)
                    .map(move |b| ((*chunk as u64) << bits) + (w * 64 + b) as u64)
            })
        })
    }
}

/// Trade id → `V` for the trades of one shard (see the module's text). Cloning it shares
/// every chunk with the clone.
#[derive(Clone)]
pub struct TradeTable<V> {
    bits: u32,
    /// Chunk `c` holds counters `c << bits .. (c + 1) << bits`; `None`: cold.
    chunks: Vec<Option<Rc<[Slot<V>]>>>,
    /// Trades in each chunk, resident or cold.
    counts: Vec<u32>,
    /// Per chunk, the slots changed since the last [`take_dirty`](Self::take_dirty).
    dirty: Vec<Option<Box<[u64]>>>,
    /// Trades of cold chunks back in memory, by counter.
    thawed: IdMap<u64, V>,
    /// Entries whose counter lay beyond the next chunk when inserted, or whose slot held an
    /// entry of another logical shard.
    scattered: IdMap<TradeId, V>,
    len: usize,
    /// The highest counter laid out in chunks: every counter from 1 to it is a trade (the
    /// engine leaves no gaps), so the table on disk must hold a record for each.
    dense_max: u64,
    cold_chunks: usize,
    /// Goes up with every eviction, so that a read of the disk can tell whether memory let a
    /// trade go while it waited (and read again: the disk may have changed under it).
    evictions: u64,
}

impl<V: Entry> Default for TradeTable<V> {
    fn default() -> Self {
        TradeTable::with_chunk_bits(CHUNK_BITS_MAX)
    }
}

impl<V: Entry> TradeTable<V> {
    /// An empty table of chunks of `2^bits` slots.
    pub fn with_chunk_bits(bits: u32) -> Self {
        assert!((CHUNK_BITS_MIN..=CHUNK_BITS_MAX).contains(&bits));
        TradeTable {
            bits,
            chunks: Vec::new(),
            counts: Vec::new(),
            dirty: Vec::new(),
            thawed: IdMap::default(),
            scattered: IdMap::default(),
            len: 0,
            dense_max: 0,
            cold_chunks: 0,
            evictions: 0,
        }
    }
}

impl<V: Entry + Clone> TradeTable<V> {
    fn place(&self, counter: u64) -> (usize, usize) {
        ((counter >> self.bits) as usize, (counter as usize) & ((1 << self.bits) - 1))
    }

    /// Slots per chunk.
    pub fn chunk_slots(&self) -> u64 {
        1 << self.bits
    }

    fn mark(&mut self, chunk: usize, slot: usize) {
        let words = (1usize << self.bits).div_ceil(64);
        let bits = self.dirty[chunk].get_or_insert_with(|| vec![0u64; words].into_boxed_slice());
        bits[slot / 64] |= 1 << (slot % 64);
    }

    fn is_dirty(&self, counter: u64) -> bool {
        let (chunk, slot) = self.place(counter);
        self.dirty.get(chunk).and_then(Option::as_ref).is_some_and(|bits| bits[slot / 64] & (1 << (slot % 64)) != 0)
    }

    /// The trade's entry, if it is in memory.
    pub fn get(&self, id: TradeId) -> Option<&V> {
        let (chunk, slot) = self.place(id.counter());
        let dense = match self.chunks.get(chunk) {
            Some(Some(slots)) => slots[slot].as_ref(),
            Some(None) => self.thawed.get(&id.counter()),
            None => None,
        };
        match dense {
            Some(entry) if entry.logical_shard() == id.logical_shard() => Some(entry),
            _ if self.scattered.is_empty() => None,
            _ => self.scattered.get(&id),
        }
    }

    /// The trade's entry to change, if it is in memory; the change is marked for the next
    /// checkpoint.
    pub fn get_mut(&mut self, id: TradeId) -> Option<&mut V> {
        self.entry_mut(id, true)
    }

    /// [`get_mut`](Self::get_mut) of a change the table on disk holds already.
    pub fn get_mut_unmarked(&mut self, id: TradeId) -> Option<&mut V> {
        self.entry_mut(id, false)
    }

    fn entry_mut(&mut self, id: TradeId, mark: bool) -> Option<&mut V> {
        let (chunk, slot) = self.place(id.counter());
        let held = match self.chunks.get(chunk) {
            Some(Some(slots)) => slots[slot].as_ref(),
            Some(None) => self.thawed.get(&id.counter()),
            None => None,
        };
        if held.is_none_or(|entry| entry.logical_shard() != id.logical_shard()) {
            return self.scattered.get_mut(&id);
        }
        if mark {
            self.mark(chunk, slot);
        }
        match &mut self.chunks[chunk] {
            Some(slots) => Rc::make_mut(slots)[slot].as_mut(),
            None => self.thawed.get_mut(&id.counter()),
        }
    }

    /// The trade is in memory.
    pub fn contains(&self, id: TradeId) -> bool {
        self.get(id).is_some()
    }

    /// The trade, if there is one, is in the table on disk and not in memory.
    pub fn is_cold(&self, id: TradeId) -> bool {
        let (chunk, _) = self.place(id.counter());
        matches!(self.chunks.get(chunk), Some(None))
            && !self.thawed.contains_key(&id.counter())
            && !self.scattered.contains_key(&id)
    }

    /// Brings back a trade of a cold chunk, read from the table on disk, unless it is in
    /// memory already.
    pub fn thaw(&mut self, id: TradeId, entry: V) {
        debug_assert_eq!(entry.logical_shard(), id.logical_shard());
        if self.is_cold(id) {
            self.thawed.insert(id.counter(), entry);
        }
    }

    /// Adds a trade that is not in the table (callers check with [`contains`](Self::contains)
    /// first); it is marked for the next checkpoint.
    pub fn insert_new(&mut self, id: TradeId, entry: V) {
        assert_eq!(entry.logical_shard(), id.logical_shard(), "an entry knows its trade's logical shard");
        let (chunk, slot) = self.place(id.counter());
        if chunk == self.chunks.len() {
            self.chunks.push(Some((0..1usize << self.bits).map(|_| None).collect()));
            self.counts.push(0);
            self.dirty.push(None);
        }
        self.len += 1;
        let free = match self.chunks.get_mut(chunk) {
            Some(Some(slots)) if slots[slot].is_none() => {
                Rc::make_mut(slots)[slot] = Some(entry);
                true
            }
            // A new trade in a cold chunk (an open replaying creates of a chunk it did not
            // load) stays in memory until a checkpoint writes it.
            Some(None) if !self.thawed.contains_key(&id.counter()) => {
                self.thawed.insert(id.counter(), entry);
                true
            }
            // Far from the chunks made so far, or the counter taken under another logical
            // shard: neither happens to ids the engine issues.
            _ => {
                let old = self.scattered.insert(id, entry);
                assert!(old.is_none(), "insert_new of a trade already in the table");
                false
            }
        };
        if free {
            self.counts[chunk] += 1;
            self.mark(chunk, slot);
            self.dense_max = self.dense_max.max(id.counter());
        }
    }

    /// Adds a scattered trade read back from a checkpoint.
    pub fn insert_scattered(&mut self, id: TradeId, entry: V) {
        if self.scattered.insert(id, entry).is_none() {
            self.len += 1;
        }
    }

    /// Lays out cold chunks for counters `1..=counter_max`, all in the table on disk: the
    /// table as a checkpoint left it, before [`load_chunk`](Self::load_chunk) brings the
    /// newest back. Trades are counted from the counters (the engine leaves no gaps).
    /// `counter_max` is the dense one a checkpoint recorded ([`dense_max`](Self::dense_max)),
    /// never a scattered id's, so the chunks laid out are those the trades filled.
    pub fn lay_out_cold(&mut self, counter_max: u64) {
        assert!(self.chunks.is_empty() && self.thawed.is_empty(), "laid out before any dense trade");
        if counter_max == 0 {
            return;
        }
        let (last, _) = self.place(counter_max);
        for chunk in 0..=last {
            let first = ((chunk as u64) << self.bits).max(1);
            let end = (((chunk + 1) as u64) << self.bits).min(counter_max + 1);
            self.chunks.push(None);
            self.counts.push((end - first) as u32);
            self.dirty.push(None);
            self.len += (end - first) as usize;
        }
        self.cold_chunks = last + 1;
        self.dense_max = counter_max;
    }

    /// Makes cold chunk `chunk` resident with `entries` (slot, entry), read from the table, and
    /// the chunk's thawed trades, which win over an entry read for the same slot (memory may
    /// have changed them, or made them new, since the table was written).
    pub fn load_chunk(&mut self, chunk: usize, entries: impl IntoIterator<Item = (usize, V)>) {
        assert!(matches!(self.chunks.get(chunk), Some(None)), "only a cold chunk is loaded");
        let mut slots: Vec<Slot<V>> = (0..1usize << self.bits).map(|_| None).collect();
        for (slot, entry) in entries {
            slots[slot] = Some(entry);
        }
        if !self.thawed.is_empty() {
            let first = (chunk as u64) << self.bits;
            for (slot, held) in slots.iter_mut().enumerate() {
                if let Some(entry) = self.thawed.remove(&(first + slot as u64)) {
                    *held = Some(entry);
                }
            }
        }
        let count = slots.iter().filter(|slot| slot.is_some()).count() as u32;
        self.len = self.len - self.counts[chunk] as usize + count as usize;
        self.counts[chunk] = count;
        self.chunks[chunk] = Some(slots.into());
        self.cold_chunks -= 1;
    }

    /// Whether chunk `chunk` is laid out and cold.
    pub fn is_cold_chunk(&self, chunk: usize) -> bool {
        matches!(self.chunks.get(chunk), Some(None))
    }

    /// Chunks in memory.
    pub fn resident_chunks(&self) -> usize {
        self.chunks.len() - self.cold_chunks
    }

    /// The chunk that holds `counter`.
    pub fn chunk_of(&self, counter: u64) -> usize {
        self.place(counter).0
    }

    /// Takes the counters changed since the last call (a checkpoint is about to write them).
    pub fn take_dirty(&mut self) -> Dirty {
        let chunks =
            self.dirty.iter_mut().enumerate().filter_map(|(c, bits)| bits.take().map(|bits| (c, bits))).collect();
        Dirty { bits: self.bits, chunks }
    }

    /// Puts back counters taken by a checkpoint that failed, so the next one writes them.
    pub fn restore_dirty(&mut self, taken: Dirty) {
        for (chunk, bits) in taken.chunks {
            match &mut self.dirty[chunk] {
                Some(now) => now.iter_mut().zip(bits.iter()).for_each(|(now, taken)| *now |= taken),
                free @ None => *free = Some(bits),
            }
        }
    }

    /// The dense trade at `counter`, if memory knows it: `Ok(None)` for no trade, `Err(())`
    /// when only the table on disk knows.
    #[allow(clippy::result_unit_err)]
    pub fn at_counter(&self, counter: u64) -> Result<Option<(TradeId, &V)>, ()> {
        let (chunk, slot) = self.place(counter);
        let entry = match self.chunks.get(chunk) {
            None => None,
            Some(Some(slots)) => slots[slot].as_ref(),
            Some(None) => Some(self.thawed.get(&counter).ok_or(())?),
        };
        Ok(entry.map(|entry| (TradeId::new(entry.logical_shard(), counter), entry)))
    }

    /// After a checkpoint wrote what [`take_dirty`](Self::take_dirty) took: every resident
    /// chunk but the newest `keep_chunks` (and the one new trades go to) goes cold, and
    /// thawed trades leave memory, except what changed since or is `pinned` (a write in
    /// flight will change it). Returns the trades that left memory.
    pub fn evict(&mut self, keep_chunks: usize, pinned: &[TradeId]) -> usize {
        let pinned_chunks: HashSet<usize> = pinned.iter().map(|id| self.place(id.counter()).0).collect();
        let pinned_counters: HashSet<u64> = pinned.iter().map(|id| id.counter()).collect();
        let last = self.chunks.len().saturating_sub(1);
        let mut resident = 0;
        let mut left = 0;
        for chunk in (0..self.chunks.len()).rev() {
            if self.chunks[chunk].is_none() {
                continue;
            }
            resident += 1;
            let keep = resident <= keep_chunks.max(1) || chunk == last || pinned_chunks.contains(&chunk);
            if keep || self.dirty[chunk].is_some() {
                continue;
            }
            self.chunks[chunk] = None;
            self.cold_chunks += 1;
            left += self.counts[chunk] as usize;
        }
        let before = self.thawed.len();
        let thawed = std::mem::take(&mut self.thawed);
        self.thawed = thawed
            .into_iter()
            .filter(|(counter, _)| self.is_dirty(*counter) || pinned_counters.contains(counter))
            .collect();
        let left = left + before - self.thawed.len();
        if left > 0 {
            self.evictions += 1;
        }
        left
    }

    /// The highest counter laid out in chunks (see the field).
    pub fn dense_max(&self) -> u64 {
        self.dense_max
    }

    /// Whether any chunk is cold.
    pub fn has_cold(&self) -> bool {
        self.cold_chunks > 0
    }

    /// How many evictions let trades go so far.
    pub fn evictions(&self) -> u64 {
        self.evictions
    }

    /// Trades in the table, in memory or not.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Trades in memory.
    pub fn resident_len(&self) -> usize {
        let resident: usize =
            (0..self.chunks.len()).filter(|&c| self.chunks[c].is_some()).map(|c| self.counts[c] as usize).sum();
        resident + self.thawed.len() + self.scattered.len()
    }

    /// Trades of cold chunks back in memory (thawed to be changed), by counter.
    pub fn thawed_counters(&self) -> impl Iterator<Item = u64> + '_ {
        self.thawed.keys().copied()
    }

    /// How many trades of cold chunks are back in memory.
    pub fn thawed_len(&self) -> usize {
        self.thawed.len()
    }

    /// The counter ranges of the cold chunks, ascending.
    pub fn cold_ranges(&self) -> impl Iterator<Item = std::ops::Range<u64>> + '_ {
        (0..self.chunks.len())
            .filter(|&c| self.chunks[c].is_none())
            .map(|c| ((c as u64) << self.bits)..(((c + 1) as u64) << self.bits))
    }

    /// Every trade in memory and its entry, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (TradeId, &V)> {
        let bits = self.bits;
        let dense = self.chunks.iter().enumerate().filter_map(|(c, slots)| slots.as_ref().map(|s| (c, s))).flat_map(
            move |(chunk, slots)| {
                slots.iter().enumerate().filter_map(move |(slot, entry)| {
                    let counter = ((chunk as u64) << bits) | slot as u64;
                    entry.as_ref().map(|entry| (TradeId::new(entry.logical_shard(), counter), entry))
                })
            },
        );
        let thawed = self.thawed.iter().map(|(counter, entry)| (TradeId::new(entry.logical_shard(), *counter), entry));
        dense.chain(thawed).chain(self.scattered.iter().map(|(id, entry)| (*id, entry)))
    }

    /// The scattered trades (the checkpoint keeps them; the table on disk cannot).
    pub fn scattered(&self) -> impl Iterator<Item = (TradeId, &V)> {
        self.scattered.iter().map(|(id, entry)| (*id, entry))
    }
}

#[cfg(test)]
mod tests;
