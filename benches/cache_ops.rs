//! The cache alone: a hit, and an insert that evicts under a full byte budget.

use std::rc::Rc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tradeshard_cache::Cache;

const ENTRIES: u64 = 100_000;

fn hit(c: &mut Criterion) {
    let mut cache: Cache<u64, Rc<String>> = Cache::new(64 << 20);
    for key in 0..ENTRIES {
        cache.insert(key, Rc::new(format!("value {key}")), 64);
    }
    let mut group = c.benchmark_group("cache");
    group.throughput(Throughput::Elements(1));
    let mut key = 0u64;
    group.bench_function("hit", |b| {
        b.iter(|| {
            key = (key + 7919) % ENTRIES;
            cache.get(&key).expect("cached")
        })
    });
    group.finish();
}

fn insert_evicting(c: &mut Criterion) {
    // A budget for about 10,000 entries: every insert of a new key evicts one.
    let mut cache: Cache<u64, Rc<String>> = Cache::new(10_000 * (64 + tradeshard_cache::ENTRY_OVERHEAD_BYTES));
    let mut key = 0u64;
    let mut group = c.benchmark_group("cache");
    group.throughput(Throughput::Elements(1));
    group.bench_function("insert_evicting", |b| {
        b.iter(|| {
            key += 1;
            cache.insert(key, Rc::new(String::new()), 64);
        })
    });
    group.finish();
    assert!(cache.stats().evictions > 0 || key < 10_000);
}

criterion_group!(benches, hit, insert_evicting);
criterion_main!(benches);
