//! The message workloads of the load tool.
//!
//! - `publish`: tasks publish `--payload-bytes` messages to topic `load` under the keys of
//!   `--users` users, each task an idempotent producer with one publish outstanding, durable
//!   before it is answered; then one consumer reads them all back (`consumed_per_sec`), and
//!   the run fails unless it read each exactly once (`delivered_ok`).
//! - `half-messages`: tasks prepare half messages and commit nine in ten and roll back the
//!   tenth, but leave one in a hundred unresolved for the checker (asked after half a second),
//!   while a consumer on a thread of its own receives the committed ones: the report has
//!   commits, rollbacks and check-backs per second, and the latency from a prepare's start to
//!   the delivery of its commit to the consumer.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;
use tradeshard_engine::{
    CheckAnswer, CheckFuture, ConsumerConfig, EngineHandle, HalfMessage, MessageChecker, MessageCheckers, Options,
    OutgoingMessage, StartPosition,
};

use crate::latency::{self, LatencySummary};

const TOPIC: &str = "load";

/// Check-backs the checker answered.
static CHECKS: AtomicU64 = AtomicU64::new(0);

/// Commits every half message it is asked about (the workload leaves them to it on purpose).
struct CommitAll;

impl MessageChecker for CommitAll {
    fn check(&self, _: &HalfMessage) -> CheckFuture<'_> {
        CHECKS.fetch_add(1, Ordering::Relaxed);
        Box::pin(async { CheckAnswer::Commit })
    }
}

/// The options of the half-messages workload: its checker, asked half a second after a
/// prepare and every half second after.
pub(super) fn with_checker(options: Options) -> Options {
    Options {
        checkers: MessageCheckers::default().with(TOPIC, CommitAll),
        half_check_delay: Duration::from_millis(500),
        half_check_interval: Duration::from_millis(500),
        ..options
    }
}

/// The message workloads' report.
#[derive(Serialize, Default)]
pub(super) struct MessageReport {
    pub(super) workload: &'static str,
    pub(super) elapsed_sec: f64,
    pub(super) payload_bytes: usize,
    pub(super) inflight: usize,
    /// publish: messages published (durable) per second, and read back by one consumer (each
    /// figure only in the workload that measures it; `messages`: delivered, in both).
    pub(super) messages_per_sec: Option<f64>,
    pub(super) messages: u64,
    pub(super) consumed_per_sec: Option<f64>,
    pub(super) delivered_ok: bool,
    /// half-messages: resolutions per second, and the check-backs the checker answered.
    pub(super) commits_per_sec: Option<f64>,
    pub(super) rollbacks_per_sec: Option<f64>,
    pub(super) check_backs_per_sec: Option<f64>,
    pub(super) left_to_checker: Option<u64>,
    pub(super) latency_us: LatencySummary,
    /// From a prepare's start to the delivery of its commit to a consumer: committed by their
    /// producer, and committed by the checker (asked half a second after the prepare).
    pub(super) end_to_end_us: Option<LatencySummary>,
    pub(super) checker_end_to_end_us: Option<LatencySummary>,
    #[serde(flatten)]
    pub(super) log: super::report::LogFigures,
    pub(super) errors: u64,
    pub(super) executors: usize,
    pub(super) shards: u32,
    /// Per message published, or half message resolved, over the timed phase.
    #[serde(flatten)]
    pub(super) cpu: super::cpu::CpuPerOp,
}

/// What the workload runs.
pub(super) struct MessagePlan {
    pub(super) half: bool,
    pub(super) users: u64,
    pub(super) payload_bytes: usize,
    pub(super) inflight: usize,
    pub(super) duration: Option<Duration>,
    pub(super) ops_max: Option<u64>,
}

/// Idempotent producers the publishing tasks share: a shard remembers its most recent
/// producers (`PRODUCERS_MAX`), each with a window of sequence numbers that the tasks sharing
/// one keep within (`PRODUCER_WINDOW`).
const PRODUCERS: usize = 64;

struct Shared {
    handle: EngineHandle,
    producers: Vec<RefCell<tradeshard_engine::Producer>>,
    plan: MessagePlan,
    deadline: Option<Instant>,
    issued: Cell<u64>,
    latency: RefCell<Histogram<u64>>,
    outcomes: Cell<[u64; 3]>,
    errors: Cell<u64>,
    first_error: RefCell<Option<String>>,
    base: Instant,
}

impl Shared {
    fn next(&self) -> Option<u64> {
        let n = self.issued.get();
        let over = self.deadline.is_some_and(|d| Instant::now() >= d) || self.plan.ops_max.is_some_and(|m| n >= m);
        self.issued.set(n + 1);
        (!over).then_some(n)
    }

    fn count(&self, outcome: usize) {
        let mut outcomes = self.outcomes.get();
        outcomes[outcome] += 1;
        self.outcomes.set(outcomes);
    }

    fn fail(&self, error: tradeshard_engine::Error) {
        self.errors.set(self.errors.get() + 1);
        self.first_error.borrow_mut().get_or_insert(error.to_string());
    }

    /// A payload of the planned size that starts with the nanoseconds since `base`, then
    /// whether the message is left to the checker.
    fn payload(&self, left_to_checker: bool) -> Vec<u8> {
        let mut payload = vec![b'x'; self.plan.payload_bytes.max(9)];
        payload[..8].copy_from_slice(&(self.base.elapsed().as_nanos() as u64).to_le_bytes());
        payload[8] = u8::from(left_to_checker);
        payload
    }
}

async fn worker(shared: Rc<Shared>, task: u64) {
    let producer = &shared.producers[task as usize % PRODUCERS];
    let mut rng = fastrand::Rng::with_seed(task);
    while let Some(n) = shared.next() {
        let key = (1 + rng.u64(..shared.plan.users)).to_string();
        let started = Instant::now();
        let done = match shared.plan.half {
            false => {
                let message = producer.borrow_mut().message(TOPIC, key.as_bytes(), &shared.payload(false));
                shared.handle.publish(&message).await.map(|_| 0)
            }
            true => half_message(&shared, key, n).await,
        };
        match done {
            Ok(outcome) => {
                shared.count(outcome);
                latency::record(&mut shared.latency.borrow_mut(), started.elapsed().as_micros() as u64);
            }
            Err(error) => {
                shared.fail(error);
                return;
            }
        }
    }
}

/// Prepares a half message, then commits it (0), rolls it back (1) or leaves it (2).
async fn half_message(shared: &Shared, key: String, n: u64) -> tradeshard_engine::Result<usize> {
    let left = n.is_multiple_of(100);
    let id = shared.handle.prepare(&OutgoingMessage::new(TOPIC, key, shared.payload(left))).await?;
    match n % 100 {
        0 => Ok(2),
        r if r % 10 == 1 => shared.handle.rollback_message(id).await.map(|_| 1),
        _ => shared.handle.commit_message(id).await.map(|_| 0),
    }
}

/// Runs the workload on the caller's executor.
pub(super) async fn run(handle: EngineHandle, plan: MessagePlan) -> anyhow::Result<MessageReport> {
    let routing = handle.routing();
    // A directory of an earlier run (`--dir`) holds its messages too; the read-back counts
    // them apart.
    let earlier = if plan.half { 0 } else { read_all(&handle).await? };
    let before = handle.stats().await?;
    let cpu_before = super::cpu::ThreadTimes::now();
    let base = Instant::now();
    let inflight = plan.inflight;
    let consumer = match plan.half {
        true => Some(spawn_consumer(handle.clone(), base).await?),
        false => None,
    };
    let shared = Rc::new(Shared {
        handle: handle.clone(),
        producers: (0..PRODUCERS).map(|_| RefCell::new(handle.producer())).collect(),
        deadline: plan.duration.map(|d| Instant::now() + d),
        plan,
        issued: Cell::new(0),
        latency: RefCell::new(latency::new_histogram()),
        outcomes: Cell::new([0; 3]),
        errors: Cell::new(0),
        first_error: RefCell::new(None),
        base,
    });
    let tasks: Vec<_> = (0..inflight as u64).map(|task| glommio::spawn_local(worker(shared.clone(), task))).collect();
    for task in tasks {
        task.await;
    }
    let elapsed = base.elapsed().as_secs_f64();
    let after = handle.stats().await?;
    let cpu_after = super::cpu::ThreadTimes::now();
    if let Some(error) = shared.first_error.borrow().as_ref() {
        eprintln!("load: first error: {error}");
    }
    let [done, rolled_back, left] = shared.outcomes.get();
    let mut report = MessageReport {
        workload: if shared.plan.half { "half-messages" } else { "publish" },
        elapsed_sec: elapsed,
        payload_bytes: shared.plan.payload_bytes,
        inflight,
        latency_us: latency::summarize(&shared.latency.borrow()),
        log: super::report::LogFigures::between(&before, &after, elapsed),
        errors: shared.errors.get(),
        executors: routing.executors,
        shards: routing.physical_shards,
        cpu: cpu_after.per_op_since(&cpu_before, done + rolled_back + left),
        ..MessageReport::default()
    };
    match consumer {
        None => {
            report.messages = done;
            report.messages_per_sec = Some(done as f64 / elapsed);
            let reading = Instant::now();
            let read = read_all(&handle).await?;
            report.consumed_per_sec = Some(read as f64 / reading.elapsed().as_secs_f64());
            report.delivered_ok = read == earlier + done;
        }
        Some((expecting, thread)) => {
            // The checker commits what was left to it; the consumer waits for all of it.
            let expected = done + left;
            expecting.store(expected, Ordering::Release);
            let (delivered, end_to_end, by_checker) =
                thread.join().map_err(|_| anyhow::anyhow!("the consumer panicked"))??;
            report.commits_per_sec = Some(done as f64 / elapsed);
            report.rollbacks_per_sec = Some(rolled_back as f64 / elapsed);
            report.check_backs_per_sec = Some(CHECKS.load(Ordering::Relaxed) as f64 / base.elapsed().as_secs_f64());
            report.left_to_checker = Some(left);
            report.messages = delivered;
            report.delivered_ok = delivered == expected;
            report.end_to_end_us = Some(end_to_end);
            report.checker_end_to_end_us = Some(by_checker);
        }
    }
    Ok(report)
}

/// Reads every message of the topic once with a fresh group; returns how many.
async fn read_all(handle: &EngineHandle) -> anyhow::Result<u64> {
    let config = ConsumerConfig { start: StartPosition::Earliest, ..ConsumerConfig::topics("load-reader", &[TOPIC]) };
    let mut consumer = handle.consumer(config)?;
    let mut read = 0;
    loop {
        let batches = consumer.poll_raw(65_536, Duration::from_millis(100)).await?;
        if batches.is_empty() {
            return Ok(read);
        }
        for batch in &batches {
            for message in batch.messages() {
                message?;
                read += 1;
            }
        }
    }
}

type ConsumerThread = std::thread::JoinHandle<anyhow::Result<(u64, LatencySummary, LatencySummary)>>;

/// A consumer on a thread of its own: receives committed messages until it has the number
/// the workload stores in the shared count (or 30 s pass without one), timing each, those
/// committed by their producer apart from those the checker committed.
async fn spawn_consumer(handle: EngineHandle, base: Instant) -> anyhow::Result<(Arc<AtomicU64>, ConsumerThread)> {
    let expecting = Arc::new(AtomicU64::new(u64::MAX));
    let shared = expecting.clone();
    // From the logs' ends, taken now, before the workload starts: a directory of an earlier
    // run (`--dir`) holds its messages too, and they are not this run's to count.
    let config =
        ConsumerConfig { start: StartPosition::Latest, ..ConsumerConfig::topics("load-half-messages", &[TOPIC]) };
    let mut consumer = handle.consumer(config)?;
    consumer.lag().await?;
    let thread = std::thread::Builder::new().name("load-consumer".into()).spawn(move || {
        let mut histograms = [latency::new_histogram(), latency::new_histogram()];
        let mut last_seen = Instant::now();
        let mut delivered = 0u64;
        while delivered < shared.load(Ordering::Acquire) && last_seen.elapsed() < Duration::from_secs(30) {
            let messages = consumer.poll_messages_blocking(4096, Duration::from_millis(50))?;
            let now = base.elapsed().as_nanos() as u64;
            for message in &messages {
                let sent = u64::from_le_bytes(message.payload[..8].try_into().expect("8 bytes"));
                latency::record(&mut histograms[message.payload[8] as usize], now.saturating_sub(sent) / 1000);
                last_seen = Instant::now();
            }
            delivered += messages.len() as u64;
        }
        Ok((delivered, latency::summarize(&histograms[0]), latency::summarize(&histograms[1])))
    })?;
    Ok((expecting, thread))
}

/// The message workloads on a client thread of their own, then their report.
pub(super) fn run_on_thread(
    args: &super::Args,
    engine: tradeshard_engine::Engine,
    data_dir: crate::data_dir::DataDir,
    duration: Option<Duration>,
) -> anyhow::Result<()> {
    let handle = engine.handle();
    let plan = MessagePlan {
        half: args.workload == "half-messages",
        users: args.users,
        payload_bytes: args.payload_bytes,
        inflight: args.inflight,
        duration,
        ops_max: args.ops,
    };
    let report = super::on_client_executor(move || run(handle, plan))?;
    engine.close().map_err(|e| anyhow::anyhow!("closing the engine: {e}"))?;
    eprintln!("load: data directory {} bytes", data_dir.disk_bytes());
    drop(data_dir);
    match args.json {
        true => println!("{}", serde_json::to_string(&report)?),
        false => println!("{}", serde_json::to_string_pretty(&report)?),
    }
    if !report.delivered_ok || report.errors > 0 {
        anyhow::bail!(
            "of {} messages stored, not every one was read back exactly once (retention by time or bytes \
             removes what no consumer took); {} writes failed",
            report.messages,
            report.errors
        );
    }
    Ok(())
}
