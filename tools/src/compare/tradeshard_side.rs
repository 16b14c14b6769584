//! tradeshard as a [`Store`]: the embedded engine, driven by async tasks on a client executor,
//! each task one outstanding request (as `tradeshard load` drives it).

use std::cell::RefCell;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use glommio::{LocalExecutorBuilder, Placement};
use tradeshard_engine::{Consumer, ConsumerConfig, Engine, EngineHandle, Options, StartPosition, TradeId};

use super::suite::{Store, Timed, TradeSource};
use crate::latency;
use crate::workload::UserChooser;

pub struct TradeshardStore {
    dir: PathBuf,
    cache_bytes: usize,
    engine: Option<Engine>,
    /// Consumer groups used so far (each consumption starts a new one at the earliest event).
    passes: u32,
    /// The last consumption's group, its offsets not committed: committed before the reopen,
    /// they would let the close's checkpoint remove segments the pass after the reopen must
    /// read; `settle_disk` commits them.
    last_pass: Option<Consumer>,
}

impl TradeshardStore {
    pub fn open(dir: PathBuf, cache_bytes: usize) -> anyhow::Result<TradeshardStore> {
        let engine = Engine::open(Options { cache_bytes, ..Options::new(&dir) })?;
        Ok(TradeshardStore { dir, cache_bytes, engine: Some(engine), passes: 0, last_pass: None })
    }

    fn handle(&self) -> EngineHandle {
        self.engine.as_ref().expect("open").handle()
    }
}

/// Runs `tasks` async tasks on a client executor thread until `duration` has passed; each
/// calls `op(task, rng)` in a loop and its latency is recorded. Returns the merged outcome.
fn drive<F, Fut>(tasks: usize, duration: Duration, op: F) -> anyhow::Result<Timed>
where
    F: Fn(usize, Rc<RefCell<fastrand::Rng>>) -> Fut + Send + Clone + 'static,
    Fut: std::future::Future<Output = anyhow::Result<Option<u64>>> + 'static,
{
    drive_on(1, tasks, duration, op)
}

/// [`drive`] on `clients` client threads at once, each with `tasks` tasks (their random
/// choices differ): for reads, which a cache hit answers on the calling thread, as RocksDB's
/// side reads on several threads.
fn drive_on<F, Fut>(clients: usize, tasks: usize, duration: Duration, op: F) -> anyhow::Result<Timed>
where
    F: Fn(usize, Rc<RefCell<fastrand::Rng>>) -> Fut + Send + Clone + 'static,
    Fut: std::future::Future<Output = anyhow::Result<Option<u64>>> + 'static,
{
    let threads: Vec<_> = (0..clients).map(|client| drive_one(client, tasks, duration, op.clone())).collect();
    let mut total: Option<Timed> = None;
    for thread in threads {
        let timed = thread.join().map_err(|_| anyhow::anyhow!("a client thread panicked"))??;
        match &mut total {
            None => total = Some(timed),
            Some(total) => {
                total.ops += timed.ops;
                total.seconds = total.seconds.max(timed.seconds);
                total.latency.add(&timed.latency)?;
                total.ids.extend(timed.ids);
            }
        }
    }
    total.ok_or_else(|| anyhow::anyhow!("no client thread ran"))
}

fn drive_one<F, Fut>(
    client: usize,
    tasks: usize,
    duration: Duration,
    op: F,
) -> std::thread::JoinHandle<anyhow::Result<Timed>>
where
    F: Fn(usize, Rc<RefCell<fastrand::Rng>>) -> Fut + Send + Clone + 'static,
    Fut: std::future::Future<Output = anyhow::Result<Option<u64>>> + 'static,
{
    std::thread::spawn(move || -> anyhow::Result<Timed> {
        let executor = LocalExecutorBuilder::new(Placement::Unbound)
            .name(&format!("compare-client-{client}"))
            .make()
            .map_err(|e| anyhow::anyhow!("starting the client executor: {e}"))?;
        executor.run(async move {
            let started = Instant::now();
            let deadline = started + duration;
            let outcome = Rc::new(RefCell::new(Timed {
                ops: 0,
                seconds: 0.0,
                latency: latency::new_histogram(),
                ids: Vec::new(),
            }));
            let handles: Vec<_> = (0..tasks)
                .map(|task| {
                    let (op, outcome) = (op.clone(), outcome.clone());
                    let seed = (client * tasks + task) as u64 + 1;
                    let rng = Rc::new(RefCell::new(fastrand::Rng::with_seed(seed)));
                    glommio::spawn_local(async move {
                        while Instant::now() < deadline {
                            let sent = Instant::now();
                            let id = op(task, rng.clone()).await?;
                            let mut outcome = outcome.borrow_mut();
                            latency::record(&mut outcome.latency, sent.elapsed().as_micros() as u64);
                            outcome.ops += 1;
                            outcome.ids.extend(id);
                        }
                        Ok::<_, anyhow::Error>(())
                    })
                })
                .collect();
            for handle in handles {
                handle.await?;
            }
            let mut outcome = Rc::try_unwrap(outcome).map_err(|_| anyhow::anyhow!("tasks still running"))?.into_inner();
            outcome.seconds = started.elapsed().as_secs_f64();
            Ok(outcome)
        })
    })
}

impl Store for TradeshardStore {
    fn ingest(&mut self, inflight: usize, duration: Duration, trades: &Arc<TradeSource>) -> anyhow::Result<Timed> {
        let (handle, trades) = (self.handle(), trades.clone());
        drive(inflight, duration, move |_, _| {
            let (handle, trade) = (handle.clone(), trades.take());
            async move { Ok(Some(handle.create_trade(trade).await?.id.0)) }
        })
    }

    fn get(&mut self, ids: &[u64], chooser: &UserChooser, duration: Duration) -> anyhow::Result<Timed> {
        let handle = self.handle();
        let (ids, chooser) = (Arc::new(ids.to_vec()), Arc::new(chooser.clone()));
        let clients = std::thread::available_parallelism().map_or(1, |n| n.get());
        drive_on(clients, 256 / clients, duration, move |_, rng| {
            let rank = chooser.pick(&mut rng.borrow_mut());
            let id = TradeId(ids[((rank - 1) * 7919 % ids.len() as u64) as usize]);
            let handle = handle.clone();
            async move {
                handle.get(id).await?;
                Ok(None)
            }
        })
    }

    fn list_latest(&mut self, users: u64, duration: Duration) -> anyhow::Result<Timed> {
        let handle = self.handle();
        drive(64, duration, move |_, rng| {
            let user = 1 + rng.borrow_mut().u64(..users);
            let handle = handle.clone();
            async move {
                handle.list_user_trades(user, 20, None).await?;
                Ok(None)
            }
        })
    }

    fn consume_all(&mut self) -> anyhow::Result<u64> {
        self.passes += 1;
        let group = format!("compare-{}", self.passes);
        let config = ConsumerConfig { start: StartPosition::Earliest, ..ConsumerConfig::new(group) };
        let mut consumer = self.handle().consumer(config)?;
        // Each event's record bytes, read in place, as RocksDB's side reads its outbox rows.
        let (mut events, mut bytes) = (0u64, 0usize);
        loop {
            let batches = consumer.poll_raw_blocking(100_000, Duration::ZERO)?;
            if batches.is_empty() {
                anyhow::ensure!(bytes > 0 || events == 0, "empty events");
                self.last_pass = Some(consumer);
                return Ok(events);
            }
            for batch in &batches {
                for (_, record) in batch.records() {
                    bytes += record.len();
                    events += 1;
                }
            }
        }
    }

    /// The last pass's offsets committed, then two checkpoints: the second lets retention
    /// remove every segment that group consumed (the log is kept back to the previous
    /// checkpoint).
    fn settle_disk(&mut self) -> anyhow::Result<()> {
        if let Some(mut consumer) = self.last_pass.take() {
            consumer.commit_blocking()?;
        }
        self.handle().checkpoint_blocking()?;
        self.handle().checkpoint_blocking()?;
        Ok(())
    }

    fn reopen(&mut self) -> anyhow::Result<()> {
        // Its group never committed, so it holds nothing back after the reopen.
        self.last_pass = None;
        self.engine.take().expect("open").close()?;
        super::suite::drop_page_cache();
        self.engine = Some(Engine::open(Options { cache_bytes: self.cache_bytes, ..Options::new(&self.dir) })?);
        Ok(())
    }

    fn engine_written_bytes(&mut self) -> anyhow::Result<Option<u64>> {
        Ok(Some(self.handle().stats_blocking()?.disk_bytes))
    }
}
