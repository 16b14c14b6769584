//! The S3-FIFO cache: a small FIFO, a main FIFO and a ghost FIFO of keys, under a byte budget.
//!
//! Queues hold keys; the map holds entries and which queue owns them. An entry's access count
//! saturates at 3. Invariant (asserted): `bytes` is the sum of the charges of the entries in
//! the map, and after any insert `bytes <= budget` unless a single entry is larger than the
//! budget (it is then not kept at all).

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{BuildHasher, Hash};

/// Bytes charged per entry on top of its own size: its hash-map slot at the table's load
/// factor, its queue slot, and its later ghost slot (measured: see `BENCHMARKS.md`).
pub const ENTRY_OVERHEAD_BYTES: usize = 128;
const FREQ_MAX: u8 = 3;
/// The small FIFO's share of the budget, in tenths.
const SMALL_TENTHS: usize = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Queue {
    Small,
    Main,
}

struct Entry<V> {
    value: V,
    /// Bytes charged (u32: an entry above 4 GiB is refused by `insert`), so that an entry of a
    /// two-word value still fits three words.
    charge: u32,
    freq: u8,
    queue: Queue,
}

/// Counters of a cache.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
    /// Loads run by `get_or_load` (one per coalesced group of misses).
    pub loads: u64,
    /// Misses that waited for a load already running instead of starting one.
    pub coalesced: u64,
    pub evictions: u64,
    pub bytes: u64,
    pub entries: u64,
}

impl CacheStats {
    /// Adds `other`'s counters to these (totals over several caches).
    pub fn add(&mut self, other: &CacheStats) {
        self.hits += other.hits;
        self.misses += other.misses;
        self.loads += other.loads;
        self.coalesced += other.coalesced;
        self.evictions += other.evictions;
        self.bytes += other.bytes;
        self.entries += other.entries;
    }
}

/// A byte-bounded S3-FIFO cache; `S` hashes its keys (std's SipHash unless the owner knows
/// its keys are spread already).
pub struct Cache<K, V, S = RandomState> {
    budget: usize,
    bytes: usize,
    small_bytes: usize,
    map: HashMap<K, Entry<V>, S>,
    small: VecDeque<K>,
    main: VecDeque<K>,
    ghost: VecDeque<K>,
    ghost_set: HashSet<K, S>,
    stats: CacheStats,
}

impl<K: Hash + Eq + Clone, V: Clone> Cache<K, V> {
    /// A cache that keeps at most `budget_bytes` of entries (0: keeps nothing).
    pub fn new(budget_bytes: usize) -> Self {
        Self::with_hasher(budget_bytes)
    }
}

impl<K: Hash + Eq + Clone, V: Clone, S: BuildHasher + Default> Cache<K, V, S> {
    /// [`Cache::new`] with the hasher `S`.
    pub fn with_hasher(budget_bytes: usize) -> Self {
        Cache {
            budget: budget_bytes,
            bytes: 0,
            small_bytes: 0,
            map: HashMap::default(),
            small: VecDeque::new(),
            main: VecDeque::new(),
            ghost: VecDeque::new(),
            ghost_set: HashSet::default(),
            stats: CacheStats::default(),
        }
    }

    /// The value of `key`, counting a hit or a miss.
    pub fn get(&mut self, key: &K) -> Option<V> {
        self.get_with(key, V::clone)
    }

    /// What `read` makes of the value of `key` (no clone of it), counting a hit or a miss.
    pub fn get_with<R>(&mut self, key: &K, read: impl FnOnce(&V) -> R) -> Option<R> {
        match self.map.get_mut(key) {
            Some(entry) => {
                entry.freq = (entry.freq + 1).min(FREQ_MAX);
                self.stats.hits += 1;
                Some(read(&entry.value))
            }
            None => {
                self.stats.misses += 1;
                None
            }
        }
    }

    /// Changes the value of `key` in place if it is cached, keeping its charge, its queue and
    /// its access count; returns whether it was.
    pub fn update(&mut self, key: &K, change: impl FnOnce(&mut V)) -> bool {
        match self.map.get_mut(key) {
            Some(entry) => {
                change(&mut entry.value);
                true
            }
            None => false,
        }
    }

    /// The value of `key` as a hit would return it (marking it used), without counting a hit
    /// or a miss: for a second look after a counted miss.
    pub fn peek(&mut self, key: &K) -> Option<V> {
        self.peek_with(key, V::clone)
    }

    /// What `read` makes of the value of `key` as [`peek`](Self::peek) would return it.
    pub fn peek_with<R>(&mut self, key: &K, read: impl FnOnce(&V) -> R) -> Option<R> {
        let entry = self.map.get_mut(key)?;
        entry.freq = (entry.freq + 1).min(FREQ_MAX);
        Some(read(&entry.value))
    }

    /// True if `key` is cached (no hit is counted).
    pub fn contains(&self, key: &K) -> bool {
        self.map.contains_key(key)
    }

    /// Caches `value` under `key`, charged `size_bytes` plus the per-entry overhead, replacing
    /// any previous value, and evicts until the budget holds.
    pub fn insert(&mut self, key: K, value: V, size_bytes: usize) {
        let charge = size_bytes.saturating_add(ENTRY_OVERHEAD_BYTES);
        let Some(stored_charge) = u32::try_from(charge).ok().filter(|_| charge <= self.budget) else {
            self.remove(&key);
            return;
        };
        if let Some(entry) = self.map.get_mut(&key) {
            self.bytes = self.bytes - entry.charge as usize + charge;
            if entry.queue == Queue::Small {
                self.small_bytes = self.small_bytes - entry.charge as usize + charge;
            }
            entry.value = value;
            entry.charge = stored_charge;
        } else {
            let queue = if self.ghost_set.remove(&key) { Queue::Main } else { Queue::Small };
            match queue {
                Queue::Small => {
                    self.small.push_back(key.clone());
                    self.small_bytes += charge;
                }
                Queue::Main => self.main.push_back(key.clone()),
            }
            self.bytes += charge;
            self.map.insert(key, Entry { value, charge: stored_charge, freq: 0, queue });
        }
        while self.bytes > self.budget {
            self.evict_one();
        }
        self.stats.bytes = self.bytes as u64;
        self.stats.entries = self.map.len() as u64;
        assert!(self.bytes <= self.budget, "the cache stays within its budget");
    }

    /// Drops `key` if cached.
    pub fn remove(&mut self, key: &K) {
        if let Some(entry) = self.map.remove(key) {
            self.bytes -= entry.charge as usize;
            if entry.queue == Queue::Small {
                self.small_bytes -= entry.charge as usize;
            }
            self.stats.bytes = self.bytes as u64;
            self.stats.entries = self.map.len() as u64;
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> CacheStats {
        self.stats
    }

    /// The byte budget.
    pub fn budget(&self) -> usize {
        self.budget
    }

    pub(crate) fn stats_mut(&mut self) -> &mut CacheStats {
        &mut self.stats
    }

    fn evict_one(&mut self) {
        if self.small_bytes > self.budget * SMALL_TENTHS / 10 || self.main.is_empty() {
            self.evict_small();
        } else {
            self.evict_main();
        }
    }

    /// Takes the oldest key of the small FIFO: read again → main; else dropped, remembered.
    fn evict_small(&mut self) {
        while let Some(key) = self.small.pop_front() {
            let Some(entry) = self.map.get_mut(&key) else { continue };
            if entry.queue != Queue::Small {
                continue;
            }
            self.small_bytes -= entry.charge as usize;
            if entry.freq > 0 {
                entry.queue = Queue::Main;
                entry.freq = 0;
                self.main.push_back(key);
                return;
            }
            let entry = self.map.remove(&key).expect("present");
            self.bytes -= entry.charge as usize;
            self.stats.evictions += 1;
            self.remember(key);
            return;
        }
        self.evict_main();
    }

    /// Takes the oldest key of the main FIFO: read since its last pass → another pass; else dropped.
    fn evict_main(&mut self) {
        while let Some(key) = self.main.pop_front() {
            let Some(entry) = self.map.get_mut(&key) else { continue };
            if entry.queue != Queue::Main {
                continue;
            }
            if entry.freq > 0 {
                entry.freq -= 1;
                self.main.push_back(key);
                continue;
            }
            let entry = self.map.remove(&key).expect("present");
            self.bytes -= entry.charge as usize;
            self.stats.evictions += 1;
            return;
        }
    }

    /// Remembers an evicted key, keeping the ghost list as long as the main queue.
    fn remember(&mut self, key: K) {
        if self.ghost_set.insert(key.clone()) {
            self.ghost.push_back(key);
        }
        let ghost_max = self.main.len().max(16);
        while self.ghost.len() > ghost_max {
            if let Some(old) = self.ghost.pop_front() {
                self.ghost_set.remove(&old);
            }
        }
    }
}
