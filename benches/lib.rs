//! Shared set-up for the criterion benchmarks: a pinned glommio executor that outlives one
//! benchmark's iterations, a log opened on a temporary directory of the real disk, an engine
//! opened on one, and rounds of concurrent requests from a client executor.

use std::rc::Rc;
use std::time::{Duration, Instant};

use glommio::{LocalExecutor, LocalExecutorBuilder, Placement};
use tradeshard_engine::{Consumer, Engine, EngineHandle, Options};
use tradeshard_wal::disk::DmaDisk;
use tradeshard_wal::{Wal, WalConfig};

/// A log on a real temporary directory, with the executor that runs it.
pub struct BenchLog {
    pub executor: LocalExecutor,
    pub wal: Rc<Wal<DmaDisk>>,
    _dir: tempfile::TempDir,
}

impl BenchLog {
    /// Opens a fresh log with `config` in a temporary directory under the current one (the
    /// disk being measured, not a tmpfs).
    pub fn open(config: WalConfig) -> BenchLog {
        let dir = tempfile::Builder::new().prefix("tradeshard-bench").tempdir_in(".").expect("temporary directory");
        let executor =
            LocalExecutorBuilder::new(Placement::Fixed(0)).io_memory(64 << 20).make().expect("glommio executor");
        let disk = DmaDisk::new(dir.path()).expect("log directory");
        let wal = executor.run(async move { Wal::open(disk, config, |_, _| {}).await.expect("open log").0 });
        BenchLog { executor, wal: Rc::new(wal), _dir: dir }
    }
}

/// An engine on a temporary directory under the current one, with `cache_bytes` of cache.
pub fn open_engine(cache_bytes: usize) -> (tempfile::TempDir, Engine) {
    let dir = tempfile::Builder::new().prefix("tradeshard-bench").tempdir_in(".").expect("temporary directory");
    let options = Options { segment_bytes: 16 << 20, cache_bytes, ..Options::new(dir.path()) };
    (dir, Engine::open(options).expect("engine"))
}

/// Runs `iters` rounds of `in_flight` concurrent requests made by `request`, from a client
/// executor on this thread.
pub fn concurrent<F, Fut>(handle: &EngineHandle, iters: u64, in_flight: u64, request: F) -> Duration
where
    F: Fn(EngineHandle, u64) -> Fut + 'static,
    Fut: std::future::Future<Output = ()> + 'static,
{
    let client = LocalExecutorBuilder::new(Placement::Unbound).make().expect("client executor");
    let request = Rc::new(request);
    let handle = handle.clone();
    client.run(async move {
        let start = Instant::now();
        for round in 0..iters {
            let tasks: Vec<_> = (0..in_flight)
                .map(|i| glommio::spawn_local((request.clone())(handle.clone(), round * in_flight + i)))
                .collect();
            for task in tasks {
                task.await;
            }
        }
        start.elapsed()
    })
}

/// Seeks every partition of `consumer` back to the start and polls with `poll` (which returns
/// how many events it read) until `events` are read; then checks that nothing is left.
pub fn drain(consumer: &mut Consumer, events: u64, mut poll: impl FnMut(&mut Consumer) -> u64) {
    for (partition, _) in consumer.assignment() {
        consumer.seek_blocking(partition, 0).unwrap();
    }
    let mut seen = 0;
    while seen < events {
        seen += poll(consumer);
    }
    assert_eq!(poll(consumer), 0, "nothing past the events written");
}
