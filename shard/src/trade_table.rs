//! The trade map of a shard, trade id → entry, laid out by the ids' counters.
//!
//! A shard issues trade ids with a counter that goes up by one (`TradeId::counter`), so its
//! trades' counters are dense: the table keeps each in slot `counter` of an array grown in
//! chunks of 4,096 slots. A lookup is an index, not a hash probe, and growing never moves an
//! entry: a hash map of millions of entries grew by doubling, and its rehashes (with the
//! page faults of each new table) were 13% of a shard's CPU while ingesting (`BENCHMARKS.md`),
//! while its slack cost a third more memory than the entries. A slot is the entry alone, so
//! an id whose counter is known but whose logical shard differs is not found (an entry knows its
//! logical shard).
//!
//! Chunks are shared, not owned (`Rc`): a checkpoint takes a snapshot of the table by
//! cloning the list of chunks, and a write to a chunk the snapshot still holds copies that one
//! chunk first (`Rc::make_mut`), so a snapshot costs a pointer per 4,096 trades and a write
//! during a checkpoint at most one chunk's copy.
//!
//! Ids far from the chunks already made, and an id whose counter's slot is taken under another
//! logical shard (the engine issues neither; a log crafted by hand could hold them), go to a
//! hash map instead, so that no id can make the table allocate more than one chunk for one
//! entry and the table stays a map of whole ids.

use std::rc::Rc;

use crate::id_hash::IdMap;
use crate::trade::TradeId;

const CHUNK_BITS: u32 = 12;
const CHUNK_SLOTS: usize = 1 << CHUNK_BITS;

/// What the table keeps per trade: it must know its trade's logical shard (the counter is
/// the slot), so that a slot holds the entry and nothing more.
pub trait Entry {
    fn logical_shard(&self) -> u32;
}

/// A slot of the table: `Option<V>`, which costs nothing beside `V` when `V` has a niche
/// (the index asserts it for its entry).
pub type Slot<V> = Option<V>;

/// Trade id → `V` for the trades of one shard (see the module's text). Cloning it shares
/// every chunk with the clone.
#[derive(Clone)]
pub struct TradeTable<V> {
    /// Chunk `c` holds counters `c * 4096 .. (c + 1) * 4096`.
    chunks: Vec<Rc<[Slot<V>]>>,
    /// Entries whose counter lay beyond the next chunk when inserted, or whose slot held an
    /// entry of another logical shard.
    scattered: IdMap<TradeId, V>,
    len: usize,
}

impl<V: Entry> Default for TradeTable<V> {
    fn default() -> Self {
        TradeTable { chunks: Vec::new(), scattered: IdMap::default(), len: 0 }
    }
}

fn place(id: TradeId) -> (usize, usize) {
    let counter = id.counter();
    ((counter >> CHUNK_BITS) as usize, (counter as usize) & (CHUNK_SLOTS - 1))
}

impl<V: Entry + Clone> TradeTable<V> {
    pub fn get(&self, id: TradeId) -> Option<&V> {
        let (chunk, slot) = place(id);
        match self.chunks.get(chunk).and_then(|c| c[slot].as_ref()) {
            Some(entry) if entry.logical_shard() == id.logical_shard() => Some(entry),
            _ if self.scattered.is_empty() => None,
            _ => self.scattered.get(&id),
        }
    }

    pub fn get_mut(&mut self, id: TradeId) -> Option<&mut V> {
        let (chunk, slot) = place(id);
        let held = self.chunks.get(chunk).and_then(|c| c[slot].as_ref());
        if held.is_some_and(|entry| entry.logical_shard() == id.logical_shard()) {
            return Rc::make_mut(&mut self.chunks[chunk])[slot].as_mut();
        }
        self.scattered.get_mut(&id)
    }

    pub fn contains(&self, id: TradeId) -> bool {
        self.get(id).is_some()
    }

    /// Adds a trade that is not in the table (callers check with [`contains`](Self::contains)
    /// first).
    pub fn insert_new(&mut self, id: TradeId, entry: V) {
        assert_eq!(entry.logical_shard(), id.logical_shard(), "an entry knows its trade's logical shard");
        let (chunk, slot) = place(id);
        if chunk == self.chunks.len() {
            self.chunks.push((0..CHUNK_SLOTS).map(|_| None).collect());
        }
        self.len += 1;
        match self.chunks.get_mut(chunk).map(|c| &mut Rc::make_mut(c)[slot]) {
            Some(free @ None) => *free = Some(entry),
            // Far from the chunks made so far, or the counter taken under another logical
            // shard: neither happens to ids the engine issues.
            _ => {
                let old = self.scattered.insert(id, entry);
                assert!(old.is_none(), "insert_new of a trade already in the table");
            }
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// Every trade and its entry, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (TradeId, &V)> {
        let dense = self.chunks.iter().enumerate().flat_map(|(chunk, slots)| {
            slots.iter().enumerate().filter_map(move |(slot, entry)| {
                let counter = ((chunk as u64) << CHUNK_BITS) | slot as u64;
                entry.as_ref().map(|entry| (TradeId::new(entry.logical_shard(), counter), entry))
            })
        });
        dense.chain(self.scattered.iter().map(|(id, entry)| (*id, entry)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A test entry: its logical shard and a number.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    struct Held(u32, u64);

    impl Entry for Held {
        fn logical_shard(&self) -> u32 {
            self.0
        }
    }

    proptest! {
        /// The table against a hash map: dense counters, counters far apart, and the same
        /// counter under another logical shard.
        #[test]
        fn behaves_as_a_map_of_its_ids(
            ops in prop::collection::vec((0u32..4, prop_oneof![1u64..20_000, 1u64..(1 << 40)], any::<bool>()), 1..400),
        ) {
            let mut table: TradeTable<Held> = TradeTable::default();
            let mut model = std::collections::HashMap::new();
            for (logical, counter, mutate) in ops {
                let id = TradeId::new(logical, counter);
                if mutate {
                    if let Some(found) = table.get_mut(id) {
                        found.1 += 1;
                    }
                    if let Some(found) = model.get_mut(&id) {
                        let found: &mut Held = found;
                        found.1 += 1;
                    }
                    continue;
                }
                if table.contains(id) {
                    prop_assert!(model.contains_key(&id));
                    continue;
                }
                prop_assert!(!model.contains_key(&id));
                table.insert_new(id, Held(logical, counter));
                model.insert(id, Held(logical, counter));
            }
            prop_assert_eq!(table.len(), model.len());
            for (id, expected) in &model {
                prop_assert_eq!(table.get(*id), Some(expected));
            }
            let mut listed: Vec<(TradeId, Held)> = table.iter().map(|(id, held)| (id, *held)).collect();
            let mut expected: Vec<(TradeId, Held)> = model.iter().map(|(id, held)| (*id, *held)).collect();
            listed.sort_by_key(|(id, _)| *id);
            expected.sort_by_key(|(id, _)| *id);
            prop_assert_eq!(listed, expected);
        }
    }

    #[test]
    fn dense_counters_fill_chunks_in_order() {
        let mut table: TradeTable<Held> = TradeTable::default();
        for counter in 1..=10_000u64 {
            table.insert_new(TradeId::new(3, counter), Held(3, counter));
        }
        assert_eq!(table.chunks.len(), 3, "10,000 counters in chunks of 4,096");
        assert!(table.scattered.is_empty());
        assert_eq!(table.get(TradeId::new(3, 9_999)), Some(&Held(3, 9_999)));
        assert!(table.get(TradeId::new(4, 9_999)).is_none(), "the same counter in another logical shard");
        table.insert_new(TradeId::new(3, 1 << 30), Held(3, 7));
        assert_eq!(table.chunks.len(), 3, "no chunk made for an id far away");
        assert_eq!(table.get(TradeId::new(3, 1 << 30)), Some(&Held(3, 7)));
        table.insert_new(TradeId::new(4, 9_999), Held(4, 1));
        assert_eq!(table.get(TradeId::new(4, 9_999)), Some(&Held(4, 1)), "its slot taken: kept aside");
        assert_eq!(table.get(TradeId::new(3, 9_999)), Some(&Held(3, 9_999)));
        assert_eq!(table.len(), 10_002);
    }
}
