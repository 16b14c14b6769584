//! A hash map split into many maps, so that growing it never copies all of it at once.
//!
//! A `HashMap` grows by doubling: it allocates a table twice the size and moves every entry,
//! at once. A shard's index maps hold millions of entries, and each doubling stalled the
//! shard's executor for seconds (a soak measured 3.2 s and 5.8 s at 4 M and 8 M entries per
//! shard), holding up every request of the shard. Split 256 ways, each doubling moves a
//! 256th of the entries, and the parts double at different times.
//!
//! Parts are shared, not owned (`Rc`): a checkpoint's snapshot clones the list of parts, and
//! a write to a part the snapshot still holds copies that part first (a 256th of the map).
//!
//! A key's part comes from bits 48..56 of its hash. The parts hash the key the same way and
//! use its low bits to place it and its top seven bits as the tag they compare first, so the
//! bits that choose the part are bits no part uses: each part's keys stay spread.

use std::hash::{BuildHasher, BuildHasherDefault, Hash};
use std::rc::Rc;

use crate::id_hash::{IdHasher, IdMap};

/// Parts of every map.
pub(crate) const PARTS: usize = 256;

/// A map of `K` to `V` in 256 parts (see the module's text). Cloning it shares every part
/// with the clone.
pub struct PartitionedMap<K, V> {
    parts: Vec<Rc<IdMap<K, V>>>,
}

impl<K, V> Clone for PartitionedMap<K, V> {
    fn clone(&self) -> Self {
        PartitionedMap { parts: self.parts.clone() }
    }
}

impl<K, V> Default for PartitionedMap<K, V> {
    fn default() -> Self {
        PartitionedMap { parts: (0..PARTS).map(|_| Rc::new(IdMap::default())).collect() }
    }
}

impl<K: Hash + Eq + Clone, V: Clone> PartitionedMap<K, V> {
    /// A map whose parts start as `tables` (emptied ones, with their room), then empty ones up
    /// to [`PARTS`].
    pub(crate) fn from_tables(tables: impl IntoIterator<Item = IdMap<K, V>>) -> Self {
        let mut parts: Vec<Rc<IdMap<K, V>>> = tables.into_iter().take(PARTS).map(Rc::new).collect();
        debug_assert!(parts.iter().all(|part| part.is_empty()), "tables given emptied");
        parts.resize_with(PARTS, || Rc::new(IdMap::default()));
        PartitionedMap { parts }
    }

    /// The part `key` lives in.
    pub(crate) fn part_of(key: &K) -> usize {
        (BuildHasherDefault::<IdHasher>::default().hash_one(key) >> 48) as usize % PARTS
    }

    pub fn get(&self, key: &K) -> Option<&V> {
        self.parts[Self::part_of(key)].get(key)
    }

    pub fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        let part = &mut self.parts[Self::part_of(key)];
        // A part no snapshot shares is changed in place with one probe; a shared one is
        // copied only when it holds the key.
        if Rc::get_mut(part).is_none() && !part.contains_key(key) {
            return None;
        }
        Rc::make_mut(part).get_mut(key)
    }

    /// Removes `key`, returning its value.
    pub fn remove(&mut self, key: &K) -> Option<V> {
        let part = &mut self.parts[Self::part_of(key)];
        if Rc::get_mut(part).is_none() && !part.contains_key(key) {
            return None;
        }
        Rc::make_mut(part).remove(key)
    }

    /// Inserts, returning the value `key` held before.
    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        Rc::make_mut(&mut self.parts[Self::part_of(&key)]).insert(key, value)
    }

    /// Entries held (a sum over the parts).
    pub fn len(&self) -> usize {
        self.parts.iter().map(|part| part.len()).sum()
    }

    /// Room for `entries` more in all, spread over the parts: a map about to be filled with
    /// about that many grows once, not by a doubling of every part again and again.
    pub fn reserve(&mut self, entries: usize) {
        if entries > 0 {
            for part in &mut self.parts {
                Rc::make_mut(part).reserve(entries.div_ceil(PARTS));
            }
        }
    }

    /// Every entry, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.parts.iter().flat_map(|part| part.iter())
    }

    /// The value of `key`, inserted as `V::default()` first if absent: one probe.
    pub fn get_or_default(&mut self, key: K) -> &mut V
    where
        V: Default,
    {
        Rc::make_mut(&mut self.parts[Self::part_of(&key)]).entry(key).or_default()
    }

    /// The entries of part `part` (`0..PARTS`).
    pub(crate) fn part(&self, part: usize) -> &IdMap<K, V> {
        &self.parts[part]
    }

    /// Takes part `part` (`0..PARTS`) out of the map, leaving it empty: the entries whose keys
    /// the part holds.
    pub fn take_part(&mut self, part: usize) -> Rc<IdMap<K, V>> {
        std::mem::take(&mut self.parts[part])
    }

    /// Shrinks each part filled to less than a quarter of its room to fit its entries.
    pub(crate) fn shrink_sparse_parts(&mut self) {
        for part in &mut self.parts {
            if part.len() < part.capacity() / 4 {
                Rc::make_mut(part).shrink_to_fit();
            }
        }
    }

    /// Makes `table` part `part` (`0..PARTS`), emptied first, with the entries the part held
    /// moved into it: a larger table grown before (a settled frozen layer's, `layered.rs`)
    /// takes the place of the part's, so that the part fills memory already written instead of
    /// doubling into fresh pages (which the kernel zeroes on first touch).
    pub(crate) fn refill_part(&mut self, part: usize, mut table: IdMap<K, V>) {
        table.clear();
        match Rc::try_unwrap(std::mem::take(&mut self.parts[part])) {
            Ok(entries) => table.extend(entries),
            Err(shared) => table.extend(shared.iter().map(|(key, value)| (key.clone(), value.clone()))),
        }
        self.parts[part] = Rc::new(table);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn behaves_as_one_map_and_spreads_keys_over_the_parts() {
        let mut map: PartitionedMap<u64, u64> = PartitionedMap::default();
        let mut model = std::collections::HashMap::new();
        for key in 0..50_000u64 {
            let key = key * 7 + (key >> 3);
            assert_eq!(map.insert(key, key + 1), model.insert(key, key + 1));
        }
        assert_eq!(map.insert(7, 0), model.insert(7, 0));
        *map.get_or_default(1 << 40) += 5;
        *model.entry(1 << 40).or_default() += 5;
        *map.get_or_default(7) += 1;
        *model.entry(7).or_default() += 1;
        *map.get_mut(&7).unwrap() += 1;
        *model.get_mut(&7).unwrap() += 1;
        assert_eq!(map.remove(&8), model.remove(&8));
        assert_eq!(map.remove(&8), None);
        assert!(map.get(&(1 << 40)).is_some() && map.get(&3).is_none());
        for (key, value) in &model {
            assert_eq!(map.get(key), Some(value));
        }
        let len: usize = map.parts.iter().map(|p| p.len()).sum();
        assert_eq!(len, model.len());
        // Sequential keys land in every part, evenly.
        let sizes: Vec<usize> = map.parts.iter().map(|p| p.len()).collect();
        let (min, max) = (sizes.iter().min().unwrap(), sizes.iter().max().unwrap());
        assert!(*min > 0 && *max < 3 * (len / PARTS), "part sizes {min}..{max}");
    }

    #[test]
    fn a_reserved_map_is_filled_without_growing_again() {
        let mut map: PartitionedMap<u64, u64> = PartitionedMap::default();
        map.reserve(200_000);
        let capacities = |map: &PartitionedMap<u64, u64>| map.parts.iter().map(|p| p.capacity()).collect::<Vec<_>>();
        let reserved = capacities(&map);
        assert!(reserved.iter().all(|&c| c >= 200_000 / PARTS), "every part has room for its share: {reserved:?}");
        // Half the reservation: no part, even one that draws more than its share, grows.
        for key in 0..100_000u64 {
            map.insert(key, key);
        }
        assert_eq!(capacities(&map), reserved);
        map.reserve(0);
        assert_eq!(capacities(&map), reserved, "reserving nothing changes nothing");
    }
}
