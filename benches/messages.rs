//! Application messages through the public handle on the real disk: publishes (durable, one
//! at a time from a plain thread and 256 in flight from a client executor), and a consumer
//! reading 40,000 just-published 256-byte messages (hot: within the logs' recent frames), owned and in place.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tradeshard_benches::{concurrent, drain, open_engine};
use tradeshard_engine::{ConsumerConfig, OutgoingMessage};

const PAYLOAD: [u8; 256] = [7; 256];

fn publish(c: &mut Criterion) {
    let (_dir, engine) = open_engine(0);
    let handle = engine.handle();
    let mut group = c.benchmark_group("engine_publish");
    group.throughput(Throughput::Elements(1));
    group.bench_function(BenchmarkId::from_parameter("blocking_1"), |b| {
        let mut n = 0u64;
        b.iter(|| {
            n += 1;
            handle.publish_blocking(&OutgoingMessage::new("bench", n.to_string(), PAYLOAD)).unwrap()
        })
    });
    group.bench_function(BenchmarkId::from_parameter("in_flight_256_idempotent"), |b| {
        let producers: Rc<Vec<_>> = Rc::new((0..16).map(|_| RefCell::new(handle.producer())).collect());
        b.iter_custom(|iters| {
            let rounds = iters.div_ceil(256);
            let producers = producers.clone();
            let took = concurrent(&handle, rounds, 256, move |handle, i| {
                let message = producers[i as usize % 16].borrow_mut().message("bench", &i.to_le_bytes(), &PAYLOAD);
                async move {
                    handle.publish(&message).await.unwrap();
                }
            });
            took.mul_f64(iters as f64 / (rounds * 256) as f64)
        })
    });
    group.finish();
    drop(handle);
    engine.close().unwrap();
}

/// A consumer of the topic draining 40,000 messages from two partitions (12 MB: in the recent frames each log keeps in memory), seeking back to the
/// start each iteration: owned (`poll_messages`) and read in place (`poll_raw`, `messages()`).
fn consume(c: &mut Criterion) {
    let (_dir, engine) = open_engine(0);
    let handle = engine.handle();
    let messages: u64 = 40_000;
    concurrent(&handle, 1, 1000, move |handle, i| async move {
        for n in 0..(messages / 1000) {
            let key = (i * 1000 + n).to_le_bytes();
            handle.publish(&OutgoingMessage::new("bench", key, PAYLOAD)).await.unwrap();
        }
    });
    let mut consumer = handle.consumer(ConsumerConfig::topics("bench", &["bench"])).unwrap();
    let mut group = c.benchmark_group("engine_consume_messages");
    group.throughput(Throughput::Elements(messages));
    group.bench_function("drain_40k", |b| {
        b.iter(|| {
            drain(&mut consumer, messages, |c| c.poll_messages_blocking(4096, Duration::ZERO).unwrap().len() as u64)
        })
    });
    group.bench_function("drain_40k_in_place", |b| {
        b.iter(|| {
            drain(&mut consumer, messages, |c| {
                let mut seen = 0;
                for batch in c.poll_raw_blocking(4096, Duration::ZERO).unwrap() {
                    for message in batch.messages() {
                        std::hint::black_box(message.unwrap().1.payload.len());
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
    targets = publish, consume
}
criterion_main!(benches);
