//! Requests through the public handle of an engine on the real disk: `create_trade` and `get`,
//! one at a time from a plain thread (blocking calls) and 256 in flight from a client executor.

use std::rc::Rc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tradeshard_benches::{concurrent, drain, open_engine as open};
use tradeshard_engine::{NewTrade, TradeId};

fn trade(buyer: u64, order: u64) -> NewTrade {
    NewTrade {
        buyer_id: buyer,
        merchant_id: 7,
        merchant_order_no: format!("B{buyer}-{order}"),
        amount: 100,
        currency: "CNY".into(),
        memo: String::new(),
    }
}

fn create_trade(c: &mut Criterion) {
    let (_dir, engine) = open(256 << 20);
    let handle = engine.handle();
    let mut group = c.benchmark_group("engine_create_trade");
    let mut next = 0u64;
    group.throughput(Throughput::Elements(1));
    group.bench_function(BenchmarkId::from_parameter("blocking_1"), |b| {
        b.iter(|| {
            next += 1;
            handle.create_trade_blocking(trade(next, 0)).unwrap()
        })
    });
    group.throughput(Throughput::Elements(256));
    group.bench_function(BenchmarkId::from_parameter("in_flight_256"), |b| {
        b.iter_custom(|iters| {
            concurrent(&handle, iters, 256, |handle, i| async move {
                handle.create_trade(trade(1_000_000_000 + i, 1)).await.unwrap();
            })
        })
    });
    group.finish();
    drop(handle);
    engine.close().unwrap();
}

/// Gets with the cache on (every read hits: the creates filled it) and off (every read is a
/// direct read of the log), by trade id and by merchant order number.
fn get(c: &mut Criterion) {
    for (name, cache_bytes) in [("engine_get_cached", 256 << 20), ("engine_get_cache_off", 0)] {
        get_with(c, name, cache_bytes);
    }
}

fn get_with(c: &mut Criterion, name: &str, cache_bytes: usize) {
    let (_dir, engine) = open(cache_bytes);
    let handle = engine.handle();
    let ids: Vec<TradeId> =
        (1..=10_000u64).map(|buyer| handle.create_trade_blocking(trade(buyer, 0)).unwrap().id).collect();
    let ids = Rc::new(ids);
    let mut group = c.benchmark_group(name);
    let mut next = 0usize;
    group.throughput(Throughput::Elements(1));
    group.bench_function(BenchmarkId::from_parameter("blocking_1"), |b| {
        b.iter(|| {
            next = (next + 7919) % ids.len();
            handle.get_blocking(ids[next]).unwrap()
        })
    });
    group.throughput(Throughput::Elements(256));
    group.bench_function(BenchmarkId::from_parameter("in_flight_256"), |b| {
        b.iter_custom(|iters| {
            let ids: Vec<TradeId> = ids.as_ref().clone();
            concurrent(&handle, iters, 256, move |handle, i| {
                let id = ids[(i as usize * 7919) % ids.len()];
                async move {
                    handle.get(id).await.unwrap();
                }
            })
        })
    });
    group.throughput(Throughput::Elements(256));
    group.bench_function(BenchmarkId::from_parameter("by_order_in_flight_256"), |b| {
        b.iter_custom(|iters| {
            concurrent(&handle, iters, 256, move |handle, i| async move {
                let buyer = 1 + (i * 7919) % 10_000;
                handle.get_by_order(7, &format!("B{buyer}-0")).await.unwrap();
            })
        })
    });
    group.throughput(Throughput::Elements(256 * 64));
    group.bench_function(BenchmarkId::from_parameter("in_flight_256_batch_64"), |b| {
        b.iter_custom(|iters| {
            let ids: Vec<TradeId> = ids.as_ref().clone();
            concurrent(&handle, iters, 256, move |handle, i| {
                let batch: Vec<TradeId> = (0..64).map(|j| ids[((i * 64 + j) as usize * 7919) % ids.len()]).collect();
                async move {
                    for answer in handle.get_many(&batch).await.unwrap() {
                        answer.unwrap();
                    }
                }
            })
        })
    });
    group.finish();
    drop(handle);
    engine.close().unwrap();
}

/// A consumer reading 100,000 just-written events (each poll up to 4096, decoded) from two
/// partitions, seeking back to the start each iteration.
fn consume(c: &mut Criterion) {
    let (_dir, engine) = open(256 << 20);
    let handle = engine.handle();
    let events: u64 = 100_000;
    concurrent(&handle, 1, 1000, move |handle, i| async move {
        for n in 0..(events / 1000) {
            handle.create_trade(trade(i + 1, n)).await.unwrap();
        }
    });
    let mut consumer = handle.consumer(tradeshard_engine::ConsumerConfig::new("bench")).unwrap();
    let mut group = c.benchmark_group("engine_consume");
    group.throughput(Throughput::Elements(events));
    group.bench_function("drain_100k", |b| {
        b.iter(|| drain(&mut consumer, events, |c| c.poll_blocking(4096, Duration::ZERO).unwrap().len() as u64))
    });
    // The same drain read in place: each event's record decoded as a borrowed view.
    group.bench_function("drain_100k_raw", |b| {
        b.iter(|| {
            drain(&mut consumer, events, |c| {
                let mut seen = 0;
                for batch in c.poll_raw_blocking(4096, Duration::ZERO).unwrap() {
                    for view in batch.views() {
                        std::hint::black_box(view.unwrap().1.amount);
                        seen += 1;
                    }
                }
                seen
            })
        })
    });
    group.finish();
    drop(consumer);
    drop(handle);
    engine.close().unwrap();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(Duration::from_secs(3));
    targets = create_trade, get, consume
}
criterion_main!(benches);
