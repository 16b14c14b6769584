//! Helpers shared by the integration tests: an executor to run on, log configurations sized
//! for tests, deterministic record contents, and the seed count of the simulated campaigns.

use std::cell::Cell;
use std::future::Future;
use std::rc::Rc;

use tradeshard_shard::{BranchCall, LogError, Refusal, Shard, Step, StepAnswer, StepSender, TradeError};
use tradeshard_wal::disk::SimDisk;

use tradeshard_wal::disk::SplitMix64;
use tradeshard_wal::{Compression, Durability, Preallocation, WalConfig};

/// Runs `future` to completion on a fresh glommio executor on this thread.
pub fn run<T>(future: impl Future<Output = T>) -> T {
    glommio::LocalExecutorBuilder::default().make().expect("glommio executor").run(future)
}

/// A log configuration small enough that tests roll segments, split frames and fill queues.
/// Segments are made at the roll (`Preallocation::Reserved`), so that a test can name the
/// operations of one flush; `zeroed_config` prepares them in the background instead. No
/// recent frames are kept in memory, so that every read reaches the (simulated) device.
pub fn small_config() -> WalConfig {
    WalConfig {
        shard_id: 7,
        segment_bytes: 64 << 10,
        frame_payload_bytes_max: 16 << 10,
        piece_raw_bytes: 4 << 10,
        record_bytes_max: 4 << 10,
        pending_bytes_max: 48 << 10,
        pending_records_max: 512,
        durability: Durability::Sync,
        compression: Compression::Lz4,
        preallocation: Preallocation::Reserved,
        read_chunk_bytes: 16 << 10,
        index_interval_bytes: 8 << 10,
        recent_frames_bytes: 0,
        recycled_segments_max: 4,
    }
}

/// `small_config` with the next segment zero-filled in the background.
pub fn zeroed_config() -> WalConfig {
    WalConfig { preallocation: Preallocation::Zeroed, ..small_config() }
}

/// A record of random length up to `max_len`: random bytes, or a compressible pattern.
pub fn random_record(rng: &mut SplitMix64, max_len: usize) -> Vec<u8> {
    let len = match rng.below(8) {
        0 => 0,
        1 => max_len,
        _ => rng.below(max_len as u64 + 1) as usize,
    };
    if rng.one_in(2) {
        let fill = rng.next_u64() as u8;
        (0..len).map(|i| fill.wrapping_add((i / 64) as u8)).collect()
    } else {
        (0..len).map(|_| rng.next_u64() as u8).collect()
    }
}

/// How many seeds a simulated campaign runs: `TRADESHARD_SIM_SEEDS` or `default`.
pub fn seed_count(default: u64) -> u64 {
    std::env::var("TRADESHARD_SIM_SEEDS").ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// The seeds to run: only `TRADESHARD_SIM_SEED` when set (to replay a failure), else `0..count`.
pub fn seeds(default_count: u64) -> Vec<u64> {
    match std::env::var("TRADESHARD_SIM_SEED").ok().and_then(|v| v.parse().ok()) {
        Some(seed) => vec![seed],
        None => (0..seed_count(default_count)).collect(),
    }
}

/// The simulated disk of campaign seed `seed`: odd seeds model files opened `O_DSYNC` (a write
/// is durable once it completes and the log skips its fdatasync), even seeds a write followed
/// by an fdatasync, so that every campaign covers both sync methods.
pub fn sim_disk_for_seed(seed: u64) -> tradeshard_wal::disk::SimDisk {
    if seed % 2 == 1 {
        tradeshard_wal::disk::SimDisk::with_dsync_writes()
    } else {
        tradeshard_wal::disk::SimDisk::new()
    }
}

/// Engine options for tests: a fresh directory, small segments (fast to prepare), `shards`
/// physical shards on `executors` executors, unpinned (tests share the machine).
pub fn engine_options(dir: &std::path::Path, shards: u32, executors: usize) -> tradeshard_engine::Options {
    start_watchdog();
    tradeshard_engine::Options {
        physical_shards: Some(shards),
        executors: Some(executors),
        pin: false,
        segment_bytes: 4 << 20,
        io_memory_bytes: 4 << 20,
        ..tradeshard_engine::Options::new(dir)
    }
}

/// Seconds a test binary that opens engines may run, from its first `engine_options`, before
/// its watchdog reports every thread and aborts it (`TRADESHARD_TEST_DEADLINE_SECS`; 0 turns
/// the watchdog off). Runs sized by hand (`TRADESHARD_KILL_CYCLES`, `TRADESHARD_SIM_SEEDS`:
/// the long runs of `TESTING.md`, some of which take a quarter of an hour) have none unless
/// the deadline is given too.
const TEST_DEADLINE_SECS: u64 = 400;

/// Starts, once per test binary, a thread that waits out the binary's deadline: a test standing
/// still (an executor left asleep, a reply never sent) then fails with what every thread was
/// doing (`tradeshard_engine::describe_threads`) instead of holding CI until its own limit.
pub fn start_watchdog() {
    static STARTED: std::sync::Once = std::sync::Once::new();
    STARTED.call_once(|| {
        let sized_by_hand =
            ["TRADESHARD_KILL_CYCLES", "TRADESHARD_SIM_SEEDS"].iter().any(|v| std::env::var_os(v).is_some());
        let deadline = std::env::var("TRADESHARD_TEST_DEADLINE_SECS")
            .ok()
            .and_then(|secs| secs.parse().ok())
            .unwrap_or(if sized_by_hand { 0 } else { TEST_DEADLINE_SECS });
        if deadline == 0 {
            return;
        }
        let started = std::time::Instant::now();
        std::thread::Builder::new()
            .name("test-watchdog".into())
            .spawn(move || {
                std::thread::sleep(std::time::Duration::from_secs(deadline));
                let report = format!(
                    "test binary still running after {:?} (deadline {deadline} s); executor kicks sent so far: {}; \
                     every thread:\n{}",
                    started.elapsed(),
                    tradeshard_engine::kicks_in_process(),
                    tradeshard_engine::describe_threads(std::process::id())
                );
                // To the descriptor itself: the test harness captures `eprintln!` of threads a
                // test started, and that capture dies with the process.
                let _ = std::io::Write::write_all(&mut std::io::stderr(), report.as_bytes());
                std::process::abort();
            })
            .expect("the test watchdog's thread");
    });
}

/// A valid new trade for `buyer`, order number `order`.
pub fn new_trade(buyer: u64, order: u64, amount: u64) -> tradeshard_engine::NewTrade {
    tradeshard_engine::NewTrade {
        buyer_id: buyer,
        merchant_id: 1000 + buyer % 7,
        merchant_order_no: format!("ORD-{buyer}-{order}"),
        amount,
        currency: "CNY".into(),
        // Every third memo too long to be kept inline in the trade table's record, so that
        // tests cover both places a checkpoint puts a created part (`docs/FORMAT.md`).
        memo: match order % 3 {
            2 => format!("order {order} of buyer {buyer}, with a memo longer than a table record keeps"),
            _ => format!("order {order} of buyer {buyer}"),
        },
    }
}

/// Runs a shard call that answers through a `Reply` and resolves to its answer.
pub async fn call<T: Send + 'static>(
    start: impl FnOnce(tradeshard_shard::ShardReply<T>),
) -> Result<T, tradeshard_shard::TradeError> {
    let (reply, answer) = tradeshard_shard::reply::channel();
    start(reply);
    answer.await.expect("a shard answers every request it takes")
}

/// Claims an order number in its home shard and waits until the claim is durable: the trade
/// it was confirmed with, if a create of the same body got that far.
pub async fn claim_durably(
    home: &tradeshard_shard::Shard<tradeshard_wal::disk::SimDisk>,
    request: tradeshard_shard::ClaimRequest,
) -> Result<Option<tradeshard_shard::TradeId>, tradeshard_shard::TradeError> {
    match call(|reply| home.claim_order(request, reply)).await? {
        tradeshard_shard::Reservation::Durable(trade) => Ok(trade),
        tradeshard_shard::Reservation::Pending(durable) => durable.await.expect("a shard answers every claim"),
    }
}

/// Runs a simulated campaign over `seeds(default_count)` seeds, one after another on one
/// executor; each seed's run returns how many things it checked, or a failure, which panics
/// with the seed to replay. Returns (seeds run, things checked).
pub fn run_campaign<F, Fut>(default_count: u64, run_seed: F) -> (usize, usize)
where
    F: Fn(u64) -> Fut + 'static,
    Fut: Future<Output = Result<usize, String>>,
{
    run_campaign_part(default_count, 0, 1, run_seed)
}

/// [`run_campaign`] over part `part` of `parts` equal slices of the seeds, in order: the parts
/// of a campaign are tests of their own, which the test threads run side by side. A single
/// seed (`TRADESHARD_SIM_SEED`) falls in part 0.
pub fn run_campaign_part<F, Fut>(default_count: u64, part: usize, parts: usize, run_seed: F) -> (usize, usize)
where
    F: Fn(u64) -> Fut + 'static,
    Fut: Future<Output = Result<usize, String>>,
{
    let all = seeds(default_count);
    let slice = all.len().div_ceil(parts);
    let seeds: Vec<u64> = all.into_iter().skip(part * slice).take(slice).collect();
    let count = seeds.len();
    let checked = run(async move {
        let mut checked = 0;
        for seed in seeds {
            match run_seed(seed).await {
                Ok(n) => checked += n,
                Err(failure) => panic!("seed {seed}: {failure}\nreplay with TRADESHARD_SIM_SEED={seed}"),
            }
        }
        checked
    });
    (count, checked)
}

/// What `read` gives once it stays the same over 100 ms (five reads 25 ms apart): the logs
/// standing still, since some records are written after the request that made them was
/// answered (a claim's confirmation after its create, an activity's completion after its
/// transfer). A record is counted once its write is durable, and on a loaded host one fsync
/// can outlast a single pause between two reads. A bounded wait (5 s) that fails with a
/// message.
pub fn once_still<T: PartialEq>(read: impl Fn() -> T) -> T {
    const PAUSE: std::time::Duration = std::time::Duration::from_millis(25);
    const SAME_READS: u32 = 4;
    let started = std::time::Instant::now();
    let mut last = read();
    let mut same = 0;
    while started.elapsed() < std::time::Duration::from_secs(5) {
        std::thread::sleep(PAUSE);
        let now = read();
        if now != last {
            (last, same) = (now, 0);
            continue;
        }
        same += 1;
        if same == SAME_READS {
            return now;
        }
    }
    panic!("the logs kept moving with no request sent");
}

/// The records in every log of the engine once they stand still (see [`once_still`]).
pub fn settled_records(handle: &tradeshard_engine::EngineHandle) -> u64 {
    once_still(|| handle.stats_blocking().unwrap().records)
}

/// Checks a trade read back after a crash: `sent` is every state it was sent to, in order;
/// it may be in its acknowledged state `acked` or one sent after it, never one before it.
pub fn check_read_back<S: PartialEq + std::fmt::Debug>(
    id: impl std::fmt::Display,
    sent: &[S],
    acked: &S,
    actual: &S,
) -> Result<(), String> {
    let from = sent.iter().rposition(|s| s == acked).unwrap_or(0);
    if sent[from..].contains(actual) {
        return Ok(());
    }
    Err(format!("{id} is {actual:?}: acknowledged {acked:?}, sent {sent:?}"))
}

/// The log of shard `shard_id` of a campaign of several shards: 256 KiB segments zero-filled
/// ahead, 16 KiB frames.
pub fn campaign_shard_config(shard_id: u32) -> WalConfig {
    WalConfig {
        shard_id,
        segment_bytes: 256 << 10,
        frame_payload_bytes_max: 16 << 10,
        record_bytes_max: 4 << 10,
        preallocation: Preallocation::Zeroed,
        // Several entries a segment, so that checkpoints name frames past a segment's first
        // and opens start reading there.
        index_interval_bytes: 4 << 10,
        ..WalConfig::default()
    }
}

/// A shard's log small enough that a workload rolls segments (32 KiB) and cuts frames into
/// several pieces (1 KiB), with segments zero-filled ahead as the engine makes them.
pub fn rolling_shard_config() -> WalConfig {
    WalConfig {
        segment_bytes: 32 << 10,
        frame_payload_bytes_max: 8 << 10,
        piece_raw_bytes: 1 << 10,
        record_bytes_max: 4 << 10,
        preallocation: Preallocation::Zeroed,
        index_interval_bytes: 4 << 10,
        ..WalConfig::default()
    }
}

/// Memory for 32 trades (chunks of 8), so that every checkpoint of a test sends trades to the
/// table on disk and reads and changes find them there.
pub const SMALL_TRADE_MEMORY: u64 = 32 * 88;

/// Checkpoints only when asked (and at close); retention keeps about three segments of
/// [`rolling_shard_config`]'s.
pub fn upkeep_retaining_three_segments() -> tradeshard_shard::Upkeep {
    upkeep_on_request(true, Some(3 * rolling_shard_config().segment_bytes))
}

/// Checkpoints only when a test asks (and at close if `on_close`); segments go by bytes alone
/// (`retention_bytes`), never by time, and groups never expire; trades beyond a small memory
/// leave memory at each checkpoint.
pub fn upkeep_on_request(on_close: bool, retention_bytes: Option<u64>) -> tradeshard_shard::Upkeep {
    tradeshard_shard::Upkeep {
        checkpoint_log_bytes: u64::MAX,
        checkpoint_interval: std::time::Duration::from_secs(3600),
        checkpoint_memory_bytes: u64::MAX,
        checkpoint_on_close: on_close,
        retention_time: None,
        retention_bytes,
        group_idle_expiry: None,
        trade_memory_bytes: SMALL_TRADE_MEMORY,
        ..tradeshard_shard::Upkeep::default()
    }
}

/// The offset a refusal for damage to the shard file `file` names; any other outcome fails the
/// test.
pub fn damage_in<T>(outcome: Result<T, tradeshard_shard::TradeError>, file: &str) -> u64 {
    match outcome {
        Err(tradeshard_shard::TradeError::Log(tradeshard_wal::Error::Corruption { path, offset, .. })) => {
            assert!(path.ends_with(file), "the refusal names {file}: {path:?}");
            offset
        }
        Err(other) => panic!("wrong error: {other:?}"),
        Ok(_) => panic!("damage to {file} went unreported"),
    }
}

/// The engine of the kill -9 test of messages (`engine_crash.rs` and its child): two shards,
/// one retry 20 ms after a nack, then the dead letters; half messages checked only by the
/// parent (the child's checks would come after a day).
pub fn message_options(dir: &std::path::Path) -> tradeshard_engine::Options {
    let mut options = engine_options(dir, 2, 2);
    options.upkeep.messages.retries = 1;
    options.upkeep.messages.retry_delays[0] = std::time::Duration::from_millis(20);
    options.half_check_delay = std::time::Duration::from_secs(24 * 3600);
    options
}

/// One incarnation of a shard's crash campaign: arms a crash of `disk` at a random operation
/// within the next 300, runs 1..=`clients_max` clients (`client(task, its own rng)`) and up to
/// three checkpoints 300 us apart until all end (the crash fails what is left), then drops the
/// shard and crashes the disk.
pub async fn run_until_crash<Fut>(
    shard: std::rc::Rc<tradeshard_shard::Shard<tradeshard_wal::disk::SimDisk>>,
    disk: &tradeshard_wal::disk::SimDisk,
    rng: &mut SplitMix64,
    clients_max: u64,
    client: impl Fn(u64, SplitMix64) -> Fut,
) where
    Fut: Future<Output = ()> + 'static,
{
    disk.crash_at_op(disk.ops() + 1 + rng.below(300));
    let mut tasks = Vec::new();
    for task in 0..1 + rng.below(clients_max) {
        tasks.push(glommio::spawn_local(client(task, SplitMix64::new(rng.next_u64()))));
    }
    let checkpoints = {
        let shard = shard.clone();
        let count = rng.below(4);
        glommio::spawn_local(async move {
            for _ in 0..count {
                glommio::timer::sleep(std::time::Duration::from_micros(300)).await;
                if shard.checkpoint().await.is_err() {
                    return;
                }
            }
        })
    };
    for task in tasks {
        task.await;
    }
    checkpoints.await;
    drop(shard);
    disk.crash(rng.next_u64());
}

/// Two shards on simulated disks as the activity manager reaches them (the campaigns of
/// flexible transactions), a batch's transactions for one shard in one hand-off as the engine
/// carries them; after `budget` hand-offs every one fails without reaching a shard, as a dying
/// initiator's would.
pub struct ShardPair {
    pub shards: [Rc<Shard<SimDisk>>; 2],
    pub budget: Cell<usize>,
    /// The shards' key window, as the engine tells the activity manager.
    pub key_window: Option<std::time::Duration>,
}

impl StepSender for ShardPair {
    type Error = TradeError;
    async fn send(&self, shard: u32, steps: Vec<Step>) -> Result<Vec<StepAnswer>, TradeError> {
        if self.budget.get() == 0 {
            return Err(TradeError::Log(LogError::Closed));
        }
        self.budget.set(self.budget.get() - 1);
        call(|reply| self.shards[shard as usize].transact(steps, reply)).await
    }

    async fn post(&self, shard: u32, steps: Vec<Step>) {
        let _ = self.send(shard, steps).await;
    }

    fn branches_remembered_for(&self) -> Option<std::time::Duration> {
        self.key_window
    }

    async fn send_many(
        &self,
        shard: u32,
        transactions: Vec<Vec<Step>>,
    ) -> Result<Vec<Result<Vec<StepAnswer>, TradeError>>, TradeError> {
        if self.budget.get() == 0 {
            return Err(TradeError::Log(LogError::Closed));
        }
        self.budget.set(self.budget.get() - 1);
        call(|reply| self.shards[shard as usize].transact_many(transactions, reply)).await
    }

    async fn post_many(&self, shard: u32, transactions: Vec<Vec<Step>>) {
        let _ = self.send_many(shard, transactions).await;
    }

    async fn call(&self, _: u16, _: BranchCall, activity: u128, _: u16, _: u64) -> Result<(), TradeError> {
        Err(Refusal::StepConflict { activity, reason: "the campaign's activities have no participants" }.into())
    }
}

/// Waits (bounded, 5 s) until no activity is in doubt: an activity answers once every branch
/// answered, and its completion is queued right behind it.
pub fn wait_until_no_activity_in_doubt(handle: &tradeshard_engine::EngineHandle) {
    let in_doubt = || handle.stats_blocking().unwrap().shards.iter().map(|s| s.activities_in_doubt).sum::<u64>();
    let started = std::time::Instant::now();
    while in_doubt() > 0 {
        assert!(started.elapsed() < std::time::Duration::from_secs(5), "activities left in doubt");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// A user's available CNY, asserting that nothing of theirs is frozen or reserved.
pub fn available(handle: &tradeshard_engine::EngineHandle, user: u64) -> u64 {
    let balance = handle.balance_blocking(user, "CNY").unwrap();
    assert_eq!((balance.frozen, balance.incoming), (0, 0), "no reservation left behind");
    balance.available
}

/// Balances plus money in transit, per currency: deposits less withdrawals, at every instant.
pub fn money(
    handle: &tradeshard_engine::EngineHandle,
) -> std::collections::BTreeMap<tradeshard_engine::Currency, i128> {
    let mut money: std::collections::BTreeMap<_, i128> =
        handle.account_totals_blocking().unwrap().into_iter().map(|(c, t)| (c, t as i128)).collect();
    for (currency, amount) in handle.money_in_transit_blocking().unwrap() {
        *money.entry(currency).or_default() += amount;
    }
    money
}

/// [`money`] in CNY.
pub fn money_cny(handle: &tradeshard_engine::EngineHandle) -> i128 {
    money(handle).get(&tradeshard_engine::Currency::parse("CNY").unwrap()).copied().unwrap_or(0)
}

/// Sends `command` to `shard` and waits for its receipt, which must not be an error.
pub async fn submit(
    shard: &tradeshard_shard::Shard<tradeshard_wal::disk::SimDisk>,
    command: tradeshard_shard::Command,
) -> tradeshard_shard::Receipt {
    call(|done| shard.submit(command, done)).await.unwrap()
}

/// `n` paid trades of buyer 1 from order `first` (`new_trade(1, order, 1_000)`, logical shard
/// 1); returns their ids.
pub async fn paid_from(
    shard: &tradeshard_shard::Shard<tradeshard_wal::disk::SimDisk>,
    first: u64,
    n: u64,
) -> Vec<tradeshard_shard::TradeId> {
    let mut ids = Vec::new();
    for order in first..first + n {
        let trade = new_trade(1, order, 1_000).validate().unwrap();
        let id = submit(shard, tradeshard_shard::Command::Create { trade, logical_shard: 1 }).await.id;
        submit(shard, tradeshard_shard::Command::Move { id, to: tradeshard_shard::Move::Pay }).await;
        ids.push(id);
    }
    ids
}

/// The name of the newest checkpoint file on `disk`.
pub fn newest_checkpoint(disk: &tradeshard_wal::disk::SimDisk) -> String {
    let mut names: Vec<String> = disk.list_names().into_iter().filter(|n| n.starts_with("checkpoint-")).collect();
    names.sort();
    names.pop().expect("a checkpoint")
}

/// A campaign as two tests over the halves of its seeds ([`run_campaign_part`]), in a module
/// named for the behaviour it checks: `campaign_halves!(name)` calls the test file's
/// `campaign(part)` with part 0 and part 1.
#[macro_export]
macro_rules! campaign_halves {
    ($name:ident) => {
        /// The campaign in two halves of its seeds, which the test threads run side by side.
        mod $name {
            #[test]
            fn first_half_of_the_seeds() {
                super::campaign(0);
            }

            #[test]
            fn second_half_of_the_seeds() {
                super::campaign(1);
            }
        }
    };
}
