//! A map with a frozen layer under its live one, so that a checkpoint's snapshot shares the
//! map without copying it.
//!
//! The maps of recent work take an entry per request, branch and activity, per trade created
//! (its order key, its place in its user's list) and per claim and refund: millions between two
//! checkpoints. A snapshot that shares a [`PartitionedMap`] copies each part the live map
//! writes while the snapshot holds it: the whole map once per checkpoint, into freshly zeroed
//! pages, and mostly in the first write after the snapshot, which touches every part of a map
//! keyed by random keys (a stall of the executor); and the entries that the checkpoint then
//! moves to runs are forgotten one key at a time. Here the snapshot freezes
//! the live entries instead ([`LayeredMap::freeze`]): the frozen layer is never written again,
//! so the snapshot and the live map share it whole, and new writes go to a live layer that
//! starts empty and shadows it. Once the checkpoint is durable, [`LayeredMap::settle_part`]
//! carries the frozen entries that must stay (those under way) up into the live layer and
//! drops the rest, part by part, so no turn of the executor holds it long. The tables of the
//! parts dropped are kept, emptied, for the live layer of the next freeze (or for the live
//! part at once, if larger): each interval then fills tables the last one grew, in pages
//! already written, instead of doubling from empty into fresh pages that the kernel zeroes on
//! first touch. So memory stays at its level between checkpoints rather than falling and
//! climbing again: the live tables and those kept for the next freeze, each about an
//! interval's room (a table filled to less than a quarter is not kept), until a shard with
//! nothing applied since its last checkpoint gives the kept room back
//! ([`LayeredMap::release_room`]).
//!
//! A key removed while the frozen layer holds it is a tombstone (`None`) in the live layer
//! until that part of the frozen layer goes. A value changed in place while the frozen layer
//! holds it is carried up first ([`LayeredMap::get_mut`]); a settle shows the map what the
//! frozen value was beside the live one ([`LayeredMap::settle_part_with`]), so that a value
//! that grew (a user's list) can drop what the runs now hold.

use std::hash::Hash;

use crate::id_hash::IdMap;
use crate::partitioned::{PartitionedMap, PARTS};

/// A live layer over at most one frozen one (module text).
pub(crate) struct LayeredMap<K, V> {
    live: PartitionedMap<K, Option<V>>,
    frozen: Option<PartitionedMap<K, Option<V>>>,
    /// Keys that read as present, kept as the layers change, so that counting costs nothing
    /// (stats and metrics ask for it on the executor).
    len: usize,
    /// Tables of settled frozen parts, emptied, that the next freeze's live layer starts
    /// with (the module's text); a clone (a snapshot) has none.
    spares: Vec<Option<IdMap<K, Option<V>>>>,
}

impl<K, V> Default for LayeredMap<K, V> {
    fn default() -> Self {
        LayeredMap { live: PartitionedMap::default(), frozen: None, len: 0, spares: Vec::new() }
    }
}

impl<K: Hash + Eq + Clone, V: Clone> Clone for LayeredMap<K, V> {
    fn clone(&self) -> Self {
        // An empty live layer (a snapshot's clone comes right after a freeze) is not shared:
        // the first write to a shared part copies it, and its room with it.
        let live = match self.live.len() {
            0 => PartitionedMap::default(),
            _ => self.live.clone(),
        };
        LayeredMap { live, frozen: self.frozen.clone(), len: self.len, spares: Vec::new() }
    }
}

impl<K: Hash + Eq + Clone, V: Clone> LayeredMap<K, V> {
    pub(crate) fn get(&self, key: &K) -> Option<&V> {
        match self.live.get(key) {
            Some(value) => value.as_ref(),
            None => self.frozen.as_ref()?.get(key)?.as_ref(),
        }
    }

    pub(crate) fn insert(&mut self, key: K, value: V) {
        // One probe of the live layer; the frozen one is asked only for a key the live one
        // did not hold.
        let asked_below = self.frozen.is_some().then(|| key.clone());
        let held = match self.live.insert(key, Some(value)) {
            Some(previous) => previous.is_some(),
            None => asked_below.is_some_and(|key| self.frozen_holds(&key)),
        };
        self.len += usize::from(!held);
    }

    /// Inserts `value` under `key` unless the key reads as present; whether it inserted.
    pub(crate) fn insert_new(&mut self, key: K, value: V) -> bool {
        // One probe of the live layer both checks and takes the key (a replay's every create
        // asks, and every account request): a key found present after all, the rare case, is
        // put back as it was.
        let asked_below = self.frozen.is_some().then(|| key.clone());
        let inserted = match self.live.insert(key.clone(), Some(value)) {
            Some(Some(held)) => {
                self.live.insert(key, Some(held));
                false
            }
            Some(None) => true,
            None if asked_below.is_some_and(|below| self.frozen_holds(&below)) => {
                self.live.remove(&key);
                false
            }
            None => true,
        };
        self.len += usize::from(inserted);
        inserted
    }

    /// The value of `key`, to change in place: an entry only the frozen layer holds is carried
    /// up into the live layer first (the frozen layer is never written).
    pub(crate) fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        if self.frozen.is_some() && self.live.get(key).is_none() {
            let below = self.frozen.as_ref()?.get(key)?.clone()?;
            self.live.insert(key.clone(), Some(below));
        }
        self.live.get_mut(key)?.as_mut()
    }

    /// The value of `key` to change in place, `V::default()` first if the key reads as absent
    /// (carried up as [`get_mut`](Self::get_mut) carries it).
    pub(crate) fn get_or_default(&mut self, key: K) -> &mut V
    where
        V: Default,
    {
        if self.frozen.is_none() {
            // One probe; with no layer below, no tombstone is left and `None` reads as absent.
            let slot = self.live.get_or_default(key);
            if slot.is_none() {
                *slot = Some(V::default());
                self.len += 1;
            }
            return slot.as_mut().expect("placed above");
        }
        let in_live = self.live.get(&key).map(Option::is_some);
        if in_live != Some(true) {
            // A tombstone (`Some(false)`) shadows what the frozen layer holds.
            let below = match in_live {
                None => self.frozen.as_ref().and_then(|frozen| frozen.get(&key)).and_then(Clone::clone),
                Some(_) => None,
            };
            self.len += usize::from(below.is_none());
            self.live.insert(key.clone(), Some(below.unwrap_or_default()));
        }
        self.live.get_mut(&key).and_then(Option::as_mut).expect("placed above")
    }

    pub(crate) fn remove(&mut self, key: &K) {
        let below = self.frozen.as_ref().and_then(|frozen| frozen.get(key));
        let held = match self.live.get(key) {
            Some(value) => value.is_some(),
            None => below.is_some_and(Option::is_some),
        };
        self.len -= usize::from(held);
        match below.is_some() {
            true => drop(self.live.insert(key.clone(), None)),
            false => drop(self.live.remove(key)),
        }
    }

    fn frozen_holds(&self, key: &K) -> bool {
        self.frozen.as_ref().and_then(|frozen| frozen.get(key)).is_some_and(Option::is_some)
    }

    /// Room for `entries` more in the live layer.
    pub(crate) fn reserve(&mut self, entries: usize) {
        self.live.reserve(entries);
    }

    /// Freezes the live entries (a checkpoint's snapshot is about to share the map): writes from
    /// now on go to an empty live layer (in the tables the last settle kept). A frozen layer
    /// still there (its checkpoint failed) takes the live entries over its own, so there is
    /// never more than one.
    pub(crate) fn freeze(&mut self) {
        let spares = std::mem::take(&mut self.spares);
        let live = std::mem::replace(
            &mut self.live,
            PartitionedMap::from_tables(spares.into_iter().map(Option::unwrap_or_default)),
        );
        match &mut self.frozen {
            None => self.frozen = Some(live),
            Some(frozen) => {
                for (key, value) in live.iter() {
                    frozen.insert(key.clone(), value.clone());
                }
            }
        }
    }

    /// Moves part `part` (`0..PARTS`) of the live layer down into the frozen layer, if one is
    /// there (its checkpoint failed): done part by part in turns before the next freeze, so
    /// that the freeze merges only what was written meanwhile rather than an interval's
    /// entries in one turn. Reads are unchanged; the entries moved are frozen ones from now
    /// on, as a freeze would have made them.
    pub(crate) fn fold_live_part(&mut self, part: usize) {
        let Some(frozen) = &mut self.frozen else { return };
        for (key, value) in self.live.take_part(part).iter() {
            frozen.insert(key.clone(), value.clone());
        }
    }

    /// Gives back the room kept for work that has stopped coming: the tables waiting for the
    /// next freeze go, and a live part filled to less than a quarter shrinks to its entries.
    /// For a shard with nothing applied since its last checkpoint, whose next interval may
    /// never come.
    pub(crate) fn release_room(&mut self) {
        self.spares = Vec::new();
        self.live.shrink_sparse_parts();
    }

    /// Whether a frozen layer is there, waiting for [`settle_part`](Self::settle_part).
    pub(crate) fn has_frozen(&self) -> bool {
        self.frozen.is_some()
    }

    /// Drops part `part` (`0..PARTS`) of the frozen layer, carrying up into the live layer the
    /// entries `keep` names that the live layer does not shadow, and keeping its table for the
    /// live layer (the module's text); the frozen layer goes with its last part. Only once what
    /// the frozen layer held is durable elsewhere. Returns the entries the part held (the work
    /// it was).
    pub(crate) fn settle_part(&mut self, part: usize, keep: impl Fn(&V) -> bool) -> usize {
        self.settle_part_with(part, keep, |_, _| true)
    }

    /// [`settle_part`](Self::settle_part), with `shadowed` called on each entry of the part
    /// that the live layer holds too (carried up and changed since): the frozen value and the
    /// live one, which it may change; it answers whether the live entry stays.
    pub(crate) fn settle_part_with(
        &mut self,
        part: usize,
        keep: impl Fn(&V) -> bool,
        mut shadowed: impl FnMut(&V, &mut V) -> bool,
    ) -> usize {
        let Some(frozen) = &mut self.frozen else { return 0 };
        let taken = frozen.take_part(part);
        for (key, value) in taken.iter() {
            match (self.live.get(key), value) {
                // A tombstone shadowed this entry; with the entry gone it shadows nothing.
                (Some(None), _) => drop(self.live.remove(key)),
                (Some(Some(_)), Some(below)) => {
                    let live = self.live.get_mut(key).and_then(Option::as_mut).expect("held");
                    if !shadowed(below, live) {
                        self.live.remove(key);
                        self.len -= 1;
                    }
                }
                (None, Some(value)) if keep(value) => drop(self.live.insert(key.clone(), Some(value.clone()))),
                (None, Some(_)) => self.len -= 1,
                _ => {}
            }
        }
        // A tombstone is made only over a key the frozen layer holds, in the part it is in:
        // with that part gone none is left, which the one-probe paths of a map with nothing
        // frozen rely on.
        debug_assert!(self.live.part(part).values().all(Option::is_some), "a tombstone outlived its frozen part");
        let held = taken.len();
        // The part's table is kept once no snapshot holds it: the live part's from now on if
        // larger, else the next live layer's first, emptied now (in this turn's bounded work
        // rather than in the freeze's one turn). The next interval, much like the last, then
        // fills it without growing. One that the last interval filled to less than a quarter
        // goes, so that tables shrink when the work does.
        if let Ok(mut table) = std::rc::Rc::try_unwrap(taken) {
            if held >= table.capacity() / 4 {
                if table.capacity() > self.live.part(part).capacity() {
                    self.live.refill_part(part, table);
                } else {
                    table.clear();
                    self.spares.resize_with(PARTS, || None);
                    self.spares[part] = Some(table);
                }
            }
        }
        if part == PARTS - 1 {
            self.frozen = None;
        }
        held
    }

    /// Every entry, each key once (the live layer's first).
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&K, &V)> + '_ {
        let live = self.live.iter().filter_map(|(key, value)| Some((key, value.as_ref()?)));
        let frozen = self.frozen.iter().flat_map(|frozen| frozen.iter());
        let frozen = frozen.filter(|(key, _)| self.live.get(key).is_none());
        live.chain(frozen.filter_map(|(key, value)| Some((key, value.as_ref()?))))
    }

    /// Entries held in both layers, shadowed ones and tombstones counted: the measure of memory
    /// held, without a pass over the entries.
    pub(crate) fn slots(&self) -> usize {
        self.live.len() + self.frozen.as_ref().map_or(0, |frozen| frozen.len())
    }

    /// Bytes of the slots at their size, a control byte each.
    pub(crate) fn entry_bytes(&self) -> u64 {
        self.slots() as u64 * (std::mem::size_of::<(K, Option<V>)>() as u64 + 1)
    }

    /// Entries, each key once.
    pub(crate) fn len(&self) -> usize {
        self.len
    }
}

/// Parts [`LayeredMap::settle_part`] goes through.
pub(crate) const SETTLE_PARTS: usize = PARTS;

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::*;

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u64, u64),
        InsertNew(u64, u64),
        /// Adds to the value in place, from zero if absent (`get_or_default`).
        Add(u64, u64),
        /// Adds one in place if present (`get_mut`).
        Bump(u64),
        Remove(u64),
        Freeze,
        Settle,
        /// Moves the live layer's part holding this key down into the frozen one.
        Fold(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u64..64, 0u64..10).prop_map(|(k, v)| Op::Insert(k, v)),
            2 => (0u64..64, 0u64..10).prop_map(|(k, v)| Op::InsertNew(k, v)),
            2 => (0u64..64, 1u64..4).prop_map(|(k, v)| Op::Add(k, v)),
            2 => (0u64..64).prop_map(Op::Bump),
            2 => (0u64..64).prop_map(Op::Remove),
            1 => Just(Op::Freeze),
            1 => Just(Op::Settle),
            1 => (0u64..64).prop_map(Op::Fold),
        ]
    }

    /// What a settle tells of an entry both layers hold (the frozen value, the live one): the
    /// live one becomes their sum, and stays unless a multiple of three.
    fn shadowed(frozen: &u64, live: &mut u64) -> bool {
        *live = live.wrapping_add(*frozen);
        !live.is_multiple_of(3)
    }

    proptest! {
        /// Against a plain map: every read, at every step, reads as the model; a snapshot
        /// (a clone right after a freeze) keeps the entries of its moment whatever the live map
        /// does after; a settle drops exactly the entries `keep` does not name (even values
        /// here), as forgetting them would, and hands each entry written since the freeze that
        /// the frozen layer held to `shadowed`.
        #[test]
        fn reads_as_one_map_with_snapshots_that_stay(ops in proptest::collection::vec(op(), 1..200)) {
            let mut map: LayeredMap<u64, u64> = LayeredMap::default();
            let mut model: HashMap<u64, u64> = HashMap::new();
            let mut snapshots: Vec<(LayeredMap<u64, u64>, HashMap<u64, u64>)> = Vec::new();
            // Keys written since the last freeze (the live layer's), and whether a layer is
            // frozen: a settle forgets the ended entries (even values) of the others.
            let (mut written_since_freeze, mut frozen) = (std::collections::HashSet::new(), false);
            let mut at_freeze: HashMap<u64, u64> = HashMap::new();
            for op in ops {
                match op {
                    Op::Insert(k, v) => {
                        map.insert(k, v);
                        model.insert(k, v);
                        written_since_freeze.insert(k);
                    }
                    Op::InsertNew(k, v) => {
                        let absent = !model.contains_key(&k);
                        prop_assert_eq!(map.insert_new(k, v), absent);
                        if absent {
                            model.insert(k, v);
                            written_since_freeze.insert(k);
                        }
                    }
                    Op::Add(k, v) => {
                        *map.get_or_default(k) += v;
                        *model.entry(k).or_default() += v;
                        written_since_freeze.insert(k);
                    }
                    Op::Bump(k) => {
                        let bumped = map.get_mut(&k).map(|value| {
                            *value += 1;
                            *value
                        });
                        let expected = model.get_mut(&k).map(|value| {
                            *value += 1;
                            *value
                        });
                        prop_assert_eq!(bumped, expected);
                        if expected.is_some() {
                            written_since_freeze.insert(k);
                        }
                    }
                    Op::Remove(k) => {
                        map.remove(&k);
                        model.remove(&k);
                        written_since_freeze.insert(k);
                    }
                    Op::Freeze => {
                        map.freeze();
                        snapshots.push((map.clone(), model.clone()));
                        at_freeze = model.clone();
                        (written_since_freeze, frozen) = (Default::default(), true);
                    }
                    Op::Fold(k) => {
                        let part = PartitionedMap::<u64, Option<u64>>::part_of(&k);
                        map.fold_live_part(part);
                        if frozen {
                            // The part's keys read as before, but are frozen ones now: written
                            // at the moment of a freeze, as far as a settle can tell.
                            for j in (0..64).filter(|j| PartitionedMap::<u64, Option<u64>>::part_of(j) == part) {
                                written_since_freeze.remove(&j);
                                match model.get(&j) {
                                    Some(v) => at_freeze.insert(j, *v),
                                    None => at_freeze.remove(&j),
                                };
                            }
                        }
                    }
                    Op::Settle => {
                        // The checkpointer drops its snapshot before it settles, which lets the
                        // settled parts' tables be kept for the next live layer.
                        snapshots.clear();
                        for part in 0..SETTLE_PARTS {
                            map.settle_part_with(part, |v| v % 2 == 1, shadowed);
                        }
                        prop_assert!(!map.has_frozen());
                        if frozen {
                            model.retain(|k, v| match (written_since_freeze.contains(k), at_freeze.get(k)) {
                                (true, Some(below)) => shadowed(below, v),
                                (true, None) => true,
                                (false, _) => *v % 2 == 1,
                            });
                        }
                        frozen = false;
                    }
                }
                for k in 0..64 {
                    prop_assert_eq!(map.get(&k), model.get(&k), "key {}", k);
                }
                let mut seen: Vec<(u64, u64)> = map.iter().map(|(k, v)| (*k, *v)).collect();
                seen.sort_unstable();
                let mut expected: Vec<(u64, u64)> = model.iter().map(|(k, v)| (*k, *v)).collect();
                expected.sort_unstable();
                prop_assert_eq!(&seen, &expected);
                prop_assert_eq!(map.len(), model.len());
                prop_assert_eq!(map.iter().count(), model.len());
                prop_assert!(map.slots() >= map.len());
                for (snapshot, at) in &snapshots {
                    for k in 0..64 {
                        prop_assert_eq!(snapshot.get(&k), at.get(&k));
                    }
                }
            }
        }
    }

    #[test]
    fn a_settle_keeps_what_is_under_way_and_lets_the_rest_go_with_the_layer() {
        let mut map: LayeredMap<u64, u64> = LayeredMap::default();
        for k in 0..10_000 {
            map.insert(k, k % 3);
        }
        map.freeze();
        let snapshot = map.clone();
        map.insert(1, 7);
        map.remove(&2);
        for part in 0..SETTLE_PARTS {
            map.settle_part(part, |v| *v == 0);
        }
        assert!(!map.has_frozen());
        assert_eq!(map.get(&1), Some(&7), "the live layer's write stays");
        assert_eq!(map.get(&2), None, "removed");
        assert_eq!(map.get(&3), Some(&0), "under way: carried up");
        assert_eq!(map.get(&4), None, "ended: gone with the layer");
        assert_eq!(map.len(), map.slots(), "no tombstone is left");
        assert_eq!(map.len(), (0..10_000).filter(|k| k % 3 == 0).count() + 1);
        assert_eq!(snapshot.get(&4), Some(&1), "the snapshot keeps its moment");
    }

    fn live_room(map: &LayeredMap<u64, u64>) -> usize {
        (0..PARTS).map(|part| map.live.part(part).capacity()).sum()
    }

    fn settle_all(map: &mut LayeredMap<u64, u64>) {
        for part in 0..SETTLE_PARTS {
            map.settle_part(part, |_| false);
        }
    }

    fn fill(map: &mut LayeredMap<u64, u64>, keys: std::ops::Range<u64>) {
        keys.for_each(|k| map.insert(k, k));
    }

    /// A checkpoint's freeze, snapshot (dropped once written) and settle.
    fn checkpoint(map: &mut LayeredMap<u64, u64>) {
        map.freeze();
        drop(map.clone());
        settle_all(map);
    }

    #[test]
    fn the_tables_a_settle_lets_go_serve_the_live_layer() {
        let mut map: LayeredMap<u64, u64> = LayeredMap::default();
        fill(&mut map, 0..100_000);
        let grown = live_room(&map);
        checkpoint(&mut map);
        assert_eq!(live_room(&map), grown, "an empty live part takes the larger table at once");
        // A snapshot taken at a freeze shares none of the room of the empty live layer, which
        // the first write would otherwise copy.
        let snapshot = map.clone();
        assert_eq!(live_room(&snapshot), 0);
        fill(&mut map, 100_000..200_000);
        assert_eq!(live_room(&map), grown, "an interval like the last one fills the room without growing");
        drop(snapshot);
        // Live parts as large as the frozen ones: the frozen tables wait, emptied, for the
        // next freeze's live layer.
        map.freeze();
        fill(&mut map, 200_000..300_000);
        drop(map.clone());
        settle_all(&mut map);
        assert_eq!(live_room(&map), grown);
        map.freeze();
        assert_eq!(live_room(&map), grown, "the next live layer starts with the last one's room");
        fill(&mut map, 300_000..400_000);
        assert_eq!(live_room(&map), grown);
        assert_eq!((map.get(&5), map.get(&250_000), map.get(&350_000)), (None, Some(&250_000), Some(&350_000)));
    }

    #[test]
    fn the_tables_of_a_small_interval_go() {
        let mut map: LayeredMap<u64, u64> = LayeredMap::default();
        fill(&mut map, 0..100_000);
        checkpoint(&mut map);
        assert!(live_room(&map) > 100_000);
        // A thousand keys in room for a hundred thousand: at its settle the tables are too
        // large for the work, and neither the live layer nor the next one takes them.
        fill(&mut map, 100_000..101_000);
        checkpoint(&mut map);
        assert_eq!(live_room(&map), 0);
        map.freeze();
        assert_eq!(live_room(&map), 0, "none waits for the next live layer either");
    }

    #[test]
    fn an_idle_map_gives_back_the_room_it_kept() {
        let mut map: LayeredMap<u64, u64> = LayeredMap::default();
        fill(&mut map, 0..100_000);
        let grown = live_room(&map);
        map.freeze();
        fill(&mut map, 100_000..200_000);
        drop(map.clone());
        settle_all(&mut map);
        map.release_room();
        assert_eq!(live_room(&map), grown, "a live layer filled as it is keeps its room");
        map.freeze();
        assert_eq!(live_room(&map), 0, "the tables kept for the next live layer went");
        // A live layer of a few entries in the room of many shrinks to them.
        checkpoint(&mut map);
        assert_eq!(live_room(&map), grown);
        fill(&mut map, 500_000..500_010);
        map.release_room();
        assert!(live_room(&map) < grown / 20, "room {} for 10 entries", live_room(&map));
        assert_eq!((map.len(), map.get(&500_005)), (10, Some(&500_005)));
    }
}
