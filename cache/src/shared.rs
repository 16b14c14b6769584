//! A [`Cache`] that any thread can read: stripes of S3-FIFO caches, each behind its own lock.
//!
//! The cache is written by its owner (a shard's executor: what became durable, what a miss
//! loaded) and read by whoever holds it, so that a hit is answered on the caller's thread
//! without handing the request to the owner and waiting for the answer. A key's stripe is
//! chosen by its hash; a stripe's lock is held for one map operation and never across an
//! await. Each stripe has its share of the byte budget and evicts on its own.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hash};
use std::sync::{Mutex, MutexGuard};

use crate::fifo::{Cache, CacheStats};

/// Bytes of budget per stripe that justify one more stripe: a stripe much smaller than this
/// holds too few entries for S3-FIFO's queues to tell hot keys from cold ones.
const STRIPE_BYTES_MIN: usize = 4 << 20;

/// Most stripes: enough that a few threads rarely meet on one lock.
const STRIPES_MAX: usize = 64;

/// A lock on its own cache lines, so that threads using neighbouring stripes do not share one.
#[repr(align(128))]
struct Stripe<K, V, S>(Mutex<Cache<K, V, S>>);

/// A byte-bounded S3-FIFO cache shared between threads (`Send + Sync` when its keys and values
/// are).
pub struct SharedCache<K, V, S = RandomState> {
    stripes: Box<[Stripe<K, V, S>]>,
    hasher: S,
}

impl<K: Hash + Eq + Clone, V: Clone> SharedCache<K, V> {
    /// A cache that keeps at most `budget_bytes` of entries (0: keeps nothing).
    pub fn new(budget_bytes: usize) -> Self {
        Self::with_hasher(budget_bytes)
    }
}

impl<K: Hash + Eq + Clone, V: Clone, S: BuildHasher + Default> SharedCache<K, V, S> {
    /// [`SharedCache::new`] with the hasher `S` (for the stripes' choice and their maps).
    pub fn with_hasher(budget_bytes: usize) -> Self {
        // A power of two, rounded down, so that each stripe gets at least its minimum.
        let stripes = 1 << (budget_bytes / STRIPE_BYTES_MIN).clamp(1, STRIPES_MAX).ilog2();
        let per_stripe = budget_bytes / stripes;
        let stripes = (0..stripes).map(|_| Stripe(Mutex::new(Cache::with_hasher(per_stripe)))).collect();
        SharedCache { stripes, hasher: S::default() }
    }

    fn stripe(&self, key: &K) -> MutexGuard<'_, Cache<K, V, S>> {
        // The middle bits: a stripe's map indexes by the low bits and tags by the top ones.
        let at = (self.hasher.hash_one(key) >> 40) as usize & (self.stripes.len() - 1);
        // A panic while a stripe was held cannot leave it half-changed in a way that matters
        // to a cache: its entries are whole values; the lock's poison is ignored.
        self.stripes[at].0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// What `read` makes of the value of `key`, counting a hit or a miss. `read` runs under
    /// the stripe's lock: keep it short.
    pub fn get_with<R>(&self, key: &K, read: impl FnOnce(&V) -> R) -> Option<R> {
        self.stripe(key).get_with(key, read)
    }

    /// The value of `key`, counting a hit or a miss.
    pub fn get(&self, key: &K) -> Option<V> {
        self.get_with(key, V::clone)
    }

    /// What `read` makes of the value of `key` as a hit would, counting nothing.
    pub fn peek_with<R>(&self, key: &K, read: impl FnOnce(&V) -> R) -> Option<R> {
        self.stripe(key).peek_with(key, read)
    }

    /// The value of `key` as a hit would return it, counting nothing (see [`Cache::peek`]).
    pub fn peek(&self, key: &K) -> Option<V> {
        self.stripe(key).peek(key)
    }

    /// True if `key` is cached (no hit is counted).
    pub fn contains(&self, key: &K) -> bool {
        self.stripe(key).contains(key)
    }

    /// Caches `value` under `key` (see [`Cache::insert`]).
    pub fn insert(&self, key: K, value: V, size_bytes: usize) {
        let mut stripe = self.stripe(&key);
        stripe.insert(key, value, size_bytes);
    }

    /// Changes the value of `key` in place if it is cached, keeping its charge and its place
    /// in the queues; returns whether it was. For a value whose size the change keeps.
    pub fn update(&self, key: &K, change: impl FnOnce(&mut V)) -> bool {
        self.stripe(key).update(key, change)
    }

    /// Adds to the counters of `key`'s stripe (loads and coalesced misses, counted by the
    /// read-through layer).
    pub fn count(&self, key: &K, note: impl FnOnce(&mut CacheStats)) {
        note(self.stripe(key).stats_mut())
    }

    /// Drops every entry, keeping the budget and the counters: for an owner that stops, while
    /// others may still hold the cache.
    pub fn clear(&self) {
        for stripe in self.stripes.iter() {
            let mut cache = stripe.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            let stats = cache.stats();
            *cache = Cache::with_hasher(cache.budget());
            *cache.stats_mut() = CacheStats { bytes: 0, entries: 0, ..stats };
        }
    }

    /// Counters summed over the stripes.
    pub fn stats(&self) -> CacheStats {
        let mut total = CacheStats::default();
        for stripe in self.stripes.iter() {
            total.add(&stripe.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).stats());
        }
        total
    }

    /// The byte budget, summed over the stripes.
    pub fn budget(&self) -> usize {
        self.stripes.iter().map(|stripe| stripe.0.lock().unwrap_or_else(|p| p.into_inner()).budget()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stripes_share_the_budget_and_small_budgets_keep_one() {
        let small: SharedCache<u64, u64> = SharedCache::new(64 << 10);
        assert_eq!(small.stripes.len(), 1);
        assert_eq!(small.budget(), 64 << 10);
        let large: SharedCache<u64, u64> = SharedCache::new(1 << 30);
        assert_eq!(large.stripes.len(), STRIPES_MAX);
        assert_eq!(large.budget(), 1 << 30);
        let uneven: SharedCache<u64, u64> = SharedCache::new(12 << 20);
        assert_eq!(uneven.stripes.len(), 2, "each stripe gets at least 4 MiB");
        let off: SharedCache<u64, u64> = SharedCache::new(0);
        off.insert(1, 1, 8);
        assert_eq!(off.get(&1), None, "a budget of zero keeps nothing");
    }

    #[test]
    fn threads_read_what_the_writer_put_and_changed() {
        let cache = std::sync::Arc::new(SharedCache::<u64, u64>::new(64 << 20));
        for key in 0..10_000u64 {
            cache.insert(key, key, 8);
        }
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let cache = cache.clone();
                std::thread::spawn(move || {
                    (0..10_000u64).all(|key| matches!(cache.get(&key), Some(v) if v == key || v == key + 1))
                })
            })
            .collect();
        for key in 0..10_000u64 {
            assert!(cache.update(&key, |value| *value += 1));
        }
        for reader in readers {
            assert!(reader.join().unwrap(), "a read saw a value from before or after its change, nothing else");
        }
        assert!((0..10_000u64).all(|key| cache.get(&key) == Some(key + 1)));
        assert!(!cache.update(&10_001, |value| *value += 1), "an absent key is not added");
        assert_eq!(cache.stats().entries, 10_000);
        assert_eq!(cache.stats().hits, 3 * 10_000);
        cache.clear();
        assert_eq!((cache.get(&1), cache.stats().entries, cache.stats().bytes), (None, 0, 0));
        assert_eq!(cache.budget(), 64 << 20, "a cleared cache keeps its budget");
    }
}
