//! Hit ratio of the cache's S3-FIFO against plain LRU on the same traces: Zipf 0.99, and Zipf
//! 0.99 with sequential scans of one-time keys mixed in, at budgets of 1%, 10% and 50% of the
//! distinct keys. Ours must be at least as good everywhere and better under scans. Run with
//! `--nocapture` for the table (it is in BENCHMARKS.md).

use std::collections::{BTreeMap, HashMap};

use tradeshard_cache::Cache;

const KEYS: u64 = 20_000;
const REQUESTS: usize = 200_000;
const VALUE_BYTES: usize = 100;

/// SplitMix64, so the traces are the same on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

fn zipf_trace(seed: u64) -> Vec<u64> {
    let mut cdf = Vec::with_capacity(KEYS as usize);
    let mut total = 0.0;
    for rank in 1..=KEYS {
        total += 1.0 / (rank as f64).powf(0.99);
        cdf.push(total);
    }
    let mut rng = Rng(seed);
    (0..REQUESTS)
        .map(|_| {
            let u = (rng.next() >> 11) as f64 / (1u64 << 53) as f64 * total;
            cdf.partition_point(|&p| p < u) as u64
        })
        .collect()
}

/// The Zipf trace with a scan of `KEYS / 2` never-seen keys after every `KEYS` requests.
fn scan_trace(seed: u64) -> Vec<u64> {
    let mut trace = Vec::new();
    let mut next_scan_key = 1_000_000;
    for (i, key) in zipf_trace(seed).into_iter().enumerate() {
        trace.push(key);
        if i % KEYS as usize == KEYS as usize - 1 {
            for _ in 0..KEYS / 2 {
                trace.push(next_scan_key);
                next_scan_key += 1;
            }
        }
    }
    trace
}

/// Plain LRU by entry count.
fn lru_hit_ratio(trace: &[u64], capacity: usize) -> f64 {
    let mut last_use: HashMap<u64, u64> = HashMap::new();
    let mut by_age: BTreeMap<u64, u64> = BTreeMap::new();
    let mut hits = 0;
    for (tick, &key) in trace.iter().enumerate() {
        let tick = tick as u64;
        if let Some(old) = last_use.insert(key, tick) {
            by_age.remove(&old);
            hits += 1;
        } else if last_use.len() > capacity {
            let (_, evicted) = by_age.pop_first().expect("full");
            last_use.remove(&evicted);
        }
        by_age.insert(tick, key);
    }
    hits as f64 / trace.len() as f64
}

fn ours_hit_ratio(trace: &[u64], capacity: usize) -> f64 {
    let mut cache = Cache::new(capacity * (VALUE_BYTES + tradeshard_cache::ENTRY_OVERHEAD_BYTES));
    let mut hits = 0;
    for &key in trace {
        if cache.get(&key).is_some() {
            hits += 1;
        } else {
            cache.insert(key, (), VALUE_BYTES);
        }
    }
    hits as f64 / trace.len() as f64
}

#[test]
fn s3_fifo_is_at_least_as_good_as_lru_and_better_under_scans() {
    println!("| trace | budget | LRU | S3-FIFO |");
    println!("|---|---:|---:|---:|");
    for (name, trace) in [("zipf 0.99", zipf_trace(1)), ("zipf 0.99 + scans", scan_trace(2))] {
        for percent in [1, 10, 50] {
            let capacity = (KEYS as usize * percent / 100).max(1);
            let (lru, ours) = (lru_hit_ratio(&trace, capacity), ours_hit_ratio(&trace, capacity));
            println!("| {name} | {percent}% | {lru:.4} | {ours:.4} |");
            assert!(ours >= lru - 0.002, "{name} at {percent}%: S3-FIFO {ours:.4} below LRU {lru:.4}");
            if name.contains("scans") {
                assert!(ours > lru, "{name} at {percent}%: S3-FIFO {ours:.4} not above LRU {lru:.4}");
            }
        }
    }
}
