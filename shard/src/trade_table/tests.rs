//! The trade table against simple models: a map of ids, and a map plus a disk for the
//! trades that leave memory.

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

/// What the eviction model does. A checkpoint takes the dirty trades, writes them later (other
/// steps may change trades meanwhile), then evicts; or fails and puts them back.
#[derive(Debug, Clone)]
enum Step {
    Insert,
    Change(u64),
    Read(u64),
    TakeDirty,
    Written { keep: usize, pin: Option<u64> },
    Failed,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => Just(Step::Insert),
        3 => (0u64..200).prop_map(Step::Change),
        2 => (0u64..200).prop_map(Step::Read),
        1 => Just(Step::TakeDirty),
        1 => (0usize..4, prop::option::of(0u64..200)).prop_map(|(keep, pin)| Step::Written { keep, pin }),
        1 => Just(Step::Failed),
    ]
}

proptest! {
    /// Trades leave memory only once a checkpoint wrote them and nothing changed them since,
    /// come back to be changed, and every read (from memory, or from the disk for a cold
    /// trade) sees the model's value; after a checkpoint, memory holds the chunks kept, the
    /// trades changed since, and nothing more.
    #[test]
    fn evicted_trades_read_and_change_from_the_disk(steps in prop::collection::vec(step(), 1..300)) {
        let mut table: TradeTable<Held> = TradeTable::with_chunk_bits(3);
        let mut model: std::collections::HashMap<u64, Held> = std::collections::HashMap::new();
        let mut disk: std::collections::HashMap<u64, Held> = std::collections::HashMap::new();
        // A checkpoint under way: what it took, and the values it writes (as of the take).
        let mut pending: Option<(Dirty, Vec<(u64, Held)>)> = None;
        let mut changed_since_take = std::collections::HashSet::new();
        let id = |counter: u64| TradeId::new(1, counter);
        for step in steps {
            let counter_max = model.len() as u64;
            match step {
                Step::Insert => {
                    let counter = counter_max + 1;
                    table.insert_new(id(counter), Held(1, 0));
                    model.insert(counter, Held(1, 0));
                    changed_since_take.insert(counter);
                }
                Step::Change(_) | Step::Read(_) if counter_max == 0 => {}
                Step::Change(pick) => {
                    let counter = 1 + pick % counter_max;
                    if table.is_cold(id(counter)) {
                        let stored = *disk.get(&counter).expect("a cold trade is on the disk");
                        table.thaw(id(counter), stored);
                    }
                    table.get_mut(id(counter)).expect("in memory once thawed").1 += 1;
                    model.get_mut(&counter).unwrap().1 += 1;
                    changed_since_take.insert(counter);
                }
                Step::Read(pick) => {
                    let counter = 1 + pick % counter_max;
                    let read = match table.get(id(counter)) {
                        Some(held) => *held,
                        None => {
                            prop_assert!(table.is_cold(id(counter)));
                            disk[&counter]
                        }
                    };
                    prop_assert_eq!(read, model[&counter]);
                }
                Step::TakeDirty if pending.is_none() => {
                    let dirty = table.take_dirty();
                    let mut values = Vec::new();
                    for counter in dirty.counters() {
                        let (at, held) = table.at_counter(counter).expect("memory knows a dirty trade").expect("a trade");
                        prop_assert_eq!(at, id(counter));
                        values.push((counter, *held));
                    }
                    pending = Some((dirty, values));
                    changed_since_take.clear();
                }
                Step::Written { keep, pin } => {
                    let Some((_, values)) = pending.take() else { continue };
                    disk.extend(values);
                    let pinned: Vec<TradeId> = pin.filter(|_| counter_max > 0).map(|p| id(1 + p % counter_max)).into_iter().collect();
                    table.evict(keep, &pinned);
                    let bound = (keep.max(1) + 1 + pinned.len()) * 8 + pinned.len() + changed_since_take.len() * 8;
                    prop_assert!(table.resident_len() <= bound, "{} in memory, bound {}", table.resident_len(), bound);
                }
                Step::Failed => {
                    if let Some((dirty, _)) = pending.take() {
                        table.restore_dirty(dirty);
                    }
                }
                Step::TakeDirty => {}
            }
            prop_assert_eq!(table.len(), model.len());
        }
        for (counter, expected) in &model {
            let read = table.get(id(*counter)).copied().or_else(|| disk.get(counter).copied());
            prop_assert_eq!(read, Some(*expected), "counter {}", counter);
        }
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

/// A chunk loaded from the disk takes the entries read, but a trade memory holds in the chunk
/// (thawed and changed, or made new while it was cold) keeps memory's entry.
#[test]
fn a_loaded_chunk_keeps_what_memory_holds_of_it() {
    let mut table: TradeTable<Held> = TradeTable::with_chunk_bits(3);
    table.lay_out_cold(12);
    assert_eq!((table.len(), table.resident_len()), (12, 0));
    table.thaw(TradeId::new(1, 9), Held(1, 90));
    table.get_mut(TradeId::new(1, 9)).unwrap().1 = 91;
    table.insert_new(TradeId::new(1, 13), Held(1, 130));
    assert!(table.is_cold_chunk(1) && table.resident_chunks() == 0);
    table.load_chunk(1, (8..13).map(|c| ((c - 8) as usize, Held(1, c))));
    assert!(!table.is_cold_chunk(1) && table.resident_chunks() == 1);
    assert_eq!(table.get(TradeId::new(1, 9)), Some(&Held(1, 91)), "memory's change kept");
    assert_eq!(table.get(TradeId::new(1, 13)), Some(&Held(1, 130)), "memory's new trade kept");
    assert_eq!(table.get(TradeId::new(1, 10)), Some(&Held(1, 10)), "read from the disk");
    assert_eq!((table.len(), table.resident_len()), (13, 6));
    assert!(table.is_cold(TradeId::new(1, 3)), "the other chunk stays cold");
}
