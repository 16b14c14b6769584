//! Read-through loading with miss coalescing, for the tasks of the thread that owns a cache.
//!
//! The first miss on a key starts the load; later misses on the same key, while it runs, wait
//! for it instead of loading again. The outcome goes to every waiter; only a success is cached,
//! in the same poll that finished the load. Other threads may read the cache meanwhile
//! ([`SharedCache`]); the loads are the owner's alone. No borrow or lock is held across an
//! await.

use std::cell::RefCell;
use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::future::Future;
use std::hash::{BuildHasher, Hash};
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Poll, Waker};

use crate::shared::SharedCache;

struct Pending<V, E> {
    outcome: Option<Result<V, E>>,
    /// The loading caller went away before finishing: waiters load for themselves.
    abandoned: bool,
    wakers: Vec<Waker>,
}

type PendingRef<V, E> = Rc<RefCell<Pending<V, E>>>;

/// Ends a load: on drop without an outcome (the loader's future was dropped), frees the key
/// and wakes the waiters so that one of them loads instead.
struct LoadGuard<'a, K: Hash + Eq, V, E> {
    key: &'a K,
    pending: PendingRef<V, E>,
    loading: &'a RefCell<HashMap<K, PendingRef<V, E>>>,
}

impl<K: Hash + Eq, V, E> Drop for LoadGuard<'_, K, V, E> {
    fn drop(&mut self) {
        self.loading.borrow_mut().remove(self.key);
        let wakers = {
            let mut pending = self.pending.borrow_mut();
            if pending.outcome.is_none() {
                pending.abandoned = true;
            }
            std::mem::take(&mut pending.wakers)
        };
        for waker in wakers {
            waker.wake();
        }
    }
}

/// A [`SharedCache`] with read-through loading.
pub struct ReadThrough<K, V, E, S = RandomState> {
    cache: Arc<SharedCache<K, V, S>>,
    loading: RefCell<HashMap<K, PendingRef<V, E>>>,
}

impl<K: Hash + Eq + Clone, V: Clone, E: Clone> ReadThrough<K, V, E> {
    pub fn new(budget_bytes: usize) -> Self {
        Self::with_hasher(budget_bytes)
    }
}

impl<K: Hash + Eq + Clone, V: Clone, E: Clone, S: BuildHasher + Default> ReadThrough<K, V, E, S> {
    /// [`ReadThrough::new`] with the hasher `S` for the cache.
    pub fn with_hasher(budget_bytes: usize) -> Self {
        ReadThrough { cache: Arc::new(SharedCache::with_hasher(budget_bytes)), loading: RefCell::new(HashMap::new()) }
    }

    /// Read-through loading into `cache`, which others may hold too.
    pub fn over(cache: Arc<SharedCache<K, V, S>>) -> Self {
        ReadThrough { cache, loading: RefCell::new(HashMap::new()) }
    }

    /// The cache itself (for inserts on the write path, for counters, and to hand to readers
    /// on other threads).
    pub fn cache(&self) -> &Arc<SharedCache<K, V, S>> {
        &self.cache
    }

    /// The cached value, or the outcome of `load` (run once for all concurrent misses on
    /// `key`); a loaded value is cached with the size `size_of` gives it.
    pub async fn get_or_load<F, Fut>(&self, key: K, load: F, size_of: impl Fn(&V) -> usize) -> Result<V, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, E>>,
    {
        if let Some(value) = self.cache.get(&key) {
            return Ok(value);
        }
        self.load_after_miss(key, load, size_of).await
    }

    /// [`get_or_load`](Self::get_or_load) for a caller that already looked the key up with
    /// [`SharedCache::get`] and missed (the miss is counted once).
    pub async fn load_after_miss<F, Fut>(&self, key: K, load: F, size_of: impl Fn(&V) -> usize) -> Result<V, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, E>>,
    {
        let mut load = Some(load);
        loop {
            if let Some(value) = self.cache.peek(&key) {
                return Ok(value);
            }
            let existing = self.loading.borrow().get(&key).cloned();
            if let Some(pending) = existing {
                self.cache.count(&key, |stats| stats.coalesced += 1);
                match wait(&pending).await {
                    Some(outcome) => return outcome,
                    None => continue,
                }
            }
            let pending = Rc::new(RefCell::new(Pending { outcome: None, abandoned: false, wakers: Vec::new() }));
            self.loading.borrow_mut().insert(key.clone(), pending.clone());
            self.cache.count(&key, |stats| stats.loads += 1);
            let guard = LoadGuard { key: &key, pending: pending.clone(), loading: &self.loading };
            let load = load.take().expect("a caller loads at most once: it returns after loading");
            let outcome = load().await;
            if let Ok(value) = &outcome {
                let size = size_of(value);
                self.cache.insert(key.clone(), value.clone(), size);
            }
            pending.borrow_mut().outcome = Some(outcome.clone());
            drop(guard);
            return outcome;
        }
    }
}

/// The outcome of another caller's load, or `None` if that caller gave up.
async fn wait<V: Clone, E: Clone>(pending: &PendingRef<V, E>) -> Option<Result<V, E>> {
    std::future::poll_fn(|cx| {
        let mut pending = pending.borrow_mut();
        match &pending.outcome {
            Some(outcome) => Poll::Ready(Some(outcome.clone())),
            None if pending.abandoned => Poll::Ready(None),
            None => {
                pending.wakers.push(cx.waker().clone());
                Poll::Pending
            }
        }
    })
    .await
}
