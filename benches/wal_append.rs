//! Durable appends to one log on the real disk: throughput by record size with one appender
//! keeping a burst of records in flight, and group commit with N concurrent appenders.

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tradeshard_benches::BenchLog;
use tradeshard_wal::{Compression, WalConfig};

/// Records enqueued before awaiting them, in the record-size benchmark.
const BURST_RECORDS: usize = 64;

fn append_by_record_size(c: &mut Criterion) {
    let mut group = c.benchmark_group("wal_append_burst64");
    for record_bytes in [64usize, 256, 4096] {
        let log = BenchLog::open(WalConfig { compression: Compression::None, ..WalConfig::default() });
        let record = vec![0x5Au8; record_bytes];
        group.throughput(Throughput::Bytes((record_bytes * BURST_RECORDS) as u64));
        group.bench_function(BenchmarkId::from_parameter(record_bytes), |b| {
            b.iter_custom(|iters| {
                let (wal, record) = (log.wal.clone(), record.clone());
                log.executor.run(async move {
                    let start = Instant::now();
                    for _ in 0..iters {
                        let tickets: Vec<_> = (0..BURST_RECORDS).map(|_| wal.enqueue(&record).unwrap()).collect();
                        for ticket in tickets {
                            ticket.await.unwrap();
                        }
                    }
                    start.elapsed()
                })
            })
        });
    }
    group.finish();
}

fn group_commit_by_appenders(c: &mut Criterion) {
    let mut group = c.benchmark_group("wal_group_commit_256b");
    for appenders in [1usize, 16, 256, 4096] {
        let log = BenchLog::open(WalConfig { compression: Compression::None, ..WalConfig::default() });
        group.throughput(Throughput::Elements(appenders as u64));
        group.bench_function(BenchmarkId::from_parameter(appenders), |b| {
            b.iter_custom(|iters| {
                let wal = log.wal.clone();
                log.executor.run(async move {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let start = Instant::now();
                        let tasks: Vec<_> = (0..appenders)
                            .map(|_| {
                                let wal = wal.clone();
                                glommio::spawn_local(async move { wal.append(&[7u8; 256]).await.unwrap() })
                            })
                            .collect();
                        for task in tasks {
                            task.await;
                        }
                        total += start.elapsed();
                    }
                    total
                })
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(Duration::from_secs(3));
    targets = append_by_record_size, group_commit_by_appenders
}
criterion_main!(benches);
