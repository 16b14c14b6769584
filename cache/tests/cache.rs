//! The cache's rules: the byte budget always holds, the latest value wins, scans do not flush
//! the hot set, concurrent misses share one load, and a failed load caches nothing.

use std::cell::Cell;
use std::collections::HashMap;
use std::rc::Rc;

use futures_lite::future::{block_on, yield_now, zip};
use proptest::prelude::*;
use tradeshard_cache::{Cache, ReadThrough};

proptest! {
    #[test]
    fn the_budget_holds_and_the_latest_value_wins(
        ops in prop::collection::vec((0u32..200, 0usize..3000, any::<bool>()), 1..2000),
        budget in 0usize..50_000,
    ) {
        let mut cache: Cache<u32, (u32, usize)> = Cache::new(budget);
        let mut latest: HashMap<u32, (u32, usize)> = HashMap::new();
        for (i, (key, size, is_get)) in ops.into_iter().enumerate() {
            if is_get {
                if let Some(value) = cache.get(&key) {
                    prop_assert_eq!(Some(&value), latest.get(&key), "a cached value is the latest one");
                }
            } else {
                cache.insert(key, (i as u32, size), size);
                latest.insert(key, (i as u32, size));
            }
            prop_assert!(cache.stats().bytes as usize <= budget);
        }
    }
}

#[test]
fn a_zero_budget_caches_nothing() {
    let mut cache = Cache::new(0);
    cache.insert(1u32, 1u32, 10);
    assert_eq!(cache.get(&1), None);
    assert_eq!(cache.stats().entries, 0);
}

#[test]
fn a_scan_does_not_flush_the_hot_set() {
    let mut cache = Cache::new(100 * (100 + 64));
    for round in 0..5 {
        for key in 0..50u32 {
            if cache.get(&key).is_none() {
                cache.insert(key, round, 100);
            }
        }
    }
    for key in 1000..100_000u32 {
        cache.insert(key, 0, 100);
    }
    let hot_left = (0..50u32).filter(|key| cache.contains(key)).count();
    assert!(hot_left >= 45, "a scan of 99,000 one-time keys left {hot_left} of 50 hot keys");
    assert!(cache.stats().evictions > 90_000);
}

#[test]
fn concurrent_misses_on_one_key_run_one_load() {
    let cache: ReadThrough<u32, String, String> = ReadThrough::new(1 << 20);
    let loads = Cell::new(0);
    let load = || async {
        loads.set(loads.get() + 1);
        yield_now().await;
        Ok::<_, String>("value".to_string())
    };
    let (a, (b, c)) = block_on(zip(
        cache.get_or_load(7, load, |v| v.len()),
        zip(cache.get_or_load(7, load, |v| v.len()), cache.get_or_load(7, load, |v| v.len())),
    ));
    assert_eq!((a.unwrap(), b.unwrap(), c.unwrap()), ("value".into(), "value".into(), "value".into()));
    assert_eq!(loads.get(), 1);
    let stats = cache.cache().stats();
    assert_eq!((stats.loads, stats.coalesced, stats.misses), (1, 2, 3));
    assert_eq!(block_on(cache.get_or_load(7, load, |v| v.len())).unwrap(), "value");
    assert_eq!(loads.get(), 1, "the loaded value was cached");
}

#[test]
fn a_failed_load_caches_nothing_and_fails_every_waiter() {
    let cache: ReadThrough<u32, String, String> = ReadThrough::new(1 << 20);
    let failing = || async {
        yield_now().await;
        Err::<String, _>("disk on fire".to_string())
    };
    let (a, b) = block_on(zip(cache.get_or_load(1, failing, |v| v.len()), cache.get_or_load(1, failing, |v| v.len())));
    assert_eq!((a.unwrap_err(), b.unwrap_err()), ("disk on fire".to_string(), "disk on fire".to_string()));
    assert!(!cache.cache().contains(&1));
    let ok = block_on(cache.get_or_load(1, || async { Ok::<_, String>("fine".into()) }, |v| v.len()));
    assert_eq!(ok.unwrap(), "fine");
}

#[test]
fn a_dropped_loader_lets_a_waiter_load() {
    let cache = Rc::new(ReadThrough::<u32, u32, ()>::new(1 << 20));
    let never = || std::future::pending::<Result<u32, ()>>();
    let waiter_loaded = Cell::new(false);
    block_on(async {
        let mut first = Box::pin(cache.get_or_load(3, never, |_| 4));
        // Start the first load, which never finishes.
        assert!(futures_lite::future::poll_once(&mut first).await.is_none());
        let mut second = Box::pin(cache.get_or_load(
            3,
            || async {
                waiter_loaded.set(true);
                Ok(9)
            },
            |_| 4,
        ));
        assert!(futures_lite::future::poll_once(&mut second).await.is_none(), "the second waits for the first");
        drop(first);
        assert_eq!(second.await, Ok(9));
    });
    assert!(waiter_loaded.get());
}
