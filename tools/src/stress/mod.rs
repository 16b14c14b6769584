//! `tradeshard stress`: kill the engine's process at random instants and check, after every
//! recovery, that it holds exactly what it acknowledged.
//!
//! Each cycle starts a child process (`tradeshard stress-child`, this same binary) on the
//! data directory; the child runs a random workload and journals each intent before sending
//! it and each acknowledgement after it ([`journal`]). The parent kills the child with SIGKILL
//! at a random instant (now and then while it is still recovering), reopens the directory in
//! its own process and checks it against the model of every journal so far ([`model`]; money
//! against [`money`]'s, after sending again the requests whose answers were lost). A new
//! data directory is started every `--cycles-per-dir` cycles so that a long campaign also
//! covers recovery of young logs and keeps each check bounded.
//!
//! A violation prints the cycle and the seed, keeps the directory, and exits non-zero; so does
//! a step of a cycle that stalls past `--stall-secs` (a request never answered). Timing
//! decides where a kill lands, so a seed fixes the workload and the kill delays, not the
//! instant within the child's progress.

mod audit;
pub mod child;
mod common;
mod delivered;
mod journal;
mod model;
mod money;
mod stuck;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use tradeshard_engine::{Engine, Options};

use crate::data_dir::DataDir;
use common::engine_options;

#[derive(clap::Args, Clone, Debug)]
pub struct Args {
    /// Kill-and-recover cycles to run.
    #[arg(long, default_value_t = 100)]
    cycles: u64,
    /// Seed of the workload and of the kill delays (default: from the clock; printed).
    #[arg(long)]
    seed: Option<u64>,
    /// Where to keep the data directories and journals (new or empty); a temporary directory
    /// under the current one when not given.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Cycles on one data directory before a fresh one is started.
    #[arg(long, default_value_t = 20)]
    cycles_per_dir: u64,
    /// Writer threads in the child.
    #[arg(long, default_value_t = 8)]
    workers: usize,
    /// Longest time the child runs after opening before it is killed, in milliseconds.
    #[arg(long, default_value_t = 200)]
    run_ms_max: u64,
    /// Seconds one step of a cycle may take before the campaign fails as stalled (a request
    /// that never answers is a violation too, and must name where it stopped).
    #[arg(long, default_value_t = 300)]
    stall_secs: u64,
    /// Print the summary as one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

/// What a campaign covered.
#[derive(Debug, Default, serde::Serialize)]
struct Summary {
    seed: u64,
    cycles: u64,
    kills_while_recovering: u64,
    data_dirs: u64,
    acknowledged_trades_checked: u64,
    in_flight_found_present: u64,
    in_flight_found_absent: u64,
    offset_commits_checked: u64,
    /// Changes sent to trades of earlier cycles of the directory, many of them out of memory
    /// (in the table on disk) by then.
    older_trades_changed: u64,
    /// Requests in flight at a kill, sent again after the check, and how many of them were
    /// answered as repeats of writes that had landed.
    retries_sent: u64,
    retries_answered_as_repeat: u64,
    /// Acknowledged creates sent again after a check, by their buyer and by another
    /// (`Model::check_lookups_by_order`).
    old_creates_repeated: u64,
    /// Shards whose reopen after a kill started from a checkpoint, and the log records those
    /// reopens replayed after it.
    shard_opens_from_checkpoint: u64,
    replayed_records: u64,
    /// Shards whose log no longer started at its first record when reopened (retention ran).
    shard_opens_with_retained_log: u64,
    /// Signals the checking engines sent to an executor whose beat stood still
    /// (`engine/src/kick.rs`).
    executor_kicks: u64,
    journal_entries: u64,
    /// Trade events the audit group read, each replayed into its trade's state.
    events_audited: u64,
    /// Spans of a partition the child's consumer took between two commits, read again from
    /// the recovered log and found the same (`delivered.rs`); their events; spans whose start
    /// retention had removed by the check.
    consumed_spans_checked: u64,
    consumed_events_checked: u64,
    consumed_spans_retained_away: u64,
    /// Money: deposits and transfers whose answer a kill took, sent again; transfers made
    /// (counted at every check, so each once per check after it).
    money_requests_retried: u64,
    money_transfer_checks: u64,
    seconds: f64,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if args.cycles_per_dir == 0
        || args.workers == 0
        || args.workers > 256
        || args.run_ms_max == 0
        || args.stall_secs == 0
    {
        bail!("--cycles-per-dir, --workers (at most 256), --run-ms-max and --stall-secs must be above zero");
    }
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64)
    });
    // A check after every cycle, and the audit's pin in every directory.
    check_descriptor_budget(args.cycles + args.cycles.div_ceil(args.cycles_per_dir))?;
    let root = DataDir::new(args.dir.as_deref(), "tradeshard-stress")?;
    eprintln!("stress: {} cycles, seed {seed}, in {}", args.cycles, root.path().display());
    // The children run a copy of this binary, so that a rebuild during the campaign neither
    // stops it nor mixes builds within it.
    let child_exe = root.path().join("tradeshard-child");
    let exe = std::env::current_exe().context("finding this binary")?;
    std::fs::create_dir_all(root.path()).with_context(|| format!("making {}", root.path().display()))?;
    std::fs::copy(&exe, &child_exe).with_context(|| format!("copying {} for the children", exe.display()))?;
    let started = Instant::now();
    let watchdog = Watchdog::start(Duration::from_secs(args.stall_secs), seed, root.path());
    let mut summary = Summary { seed, ..Summary::default() };
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut model = model::Model::default();
    let mut money = money::MoneyModel::default();
    let mut audit = audit::Audit::default();
    let mut data = PathBuf::new();
    for cycle in 0..args.cycles {
        if cycle % args.cycles_per_dir == 0 {
            if !data.as_os_str().is_empty() {
                std::fs::remove_dir_all(&data).with_context(|| format!("removing {}", data.display()))?;
            }
            data = root.path().join(format!("data-{cycle:06}"));
            model = model::Model::default();
            money = money::MoneyModel::default();
            audit = audit::Audit::begin(checking_options(&data))?;
            summary.data_dirs += 1;
        }
        let cycle_seed = rng.u64(..);
        let models = (&mut model, &mut money, &mut audit);
        let paths = (data.as_path(), root.path(), child_exe.as_path());
        if let Err(violation) = run_cycle(&args, &mut rng, paths, (cycle, cycle_seed), models, &watchdog, &mut summary)
        {
            if let Some(harness) = violation.downcast_ref::<HarnessError>() {
                // Nothing was learnt about the engine: not a violation.
                let kept = root.keep();
                eprintln!("stress: cycle {cycle} could not run (seed {seed}): {harness}");
                eprintln!("stress: the data directory and journals are kept in {}", kept.display());
                bail!("cycle {cycle} could not run: {harness}");
            }
            let kept = root.keep();
            eprintln!("stress: VIOLATION in cycle {cycle} (seed {seed}, cycle seed {cycle_seed}): {violation:#}");
            eprintln!("stress: the data directory and journals are kept in {}", kept.display());
            bail!("violation in cycle {cycle}; rerun with --seed {seed}");
        }
        summary.cycles += 1;
        if (cycle + 1) % 100 == 0 || cycle + 1 == args.cycles {
            eprintln!(
                "stress: {}/{} cycles, {} acknowledged trades checked, {:.0} s",
                cycle + 1,
                args.cycles,
                summary.acknowledged_trades_checked,
                started.elapsed().as_secs_f64()
            );
        }
    }
    summary.seconds = started.elapsed().as_secs_f64();
    // A directory the caller named stays; the copy of the binary is not theirs to keep.
    std::fs::remove_file(&child_exe).with_context(|| format!("removing {}", child_exe.display()))?;
    if args.json {
        println!("{}", serde_json::to_string(&summary)?);
    } else {
        println!(
            "stress: {} cycles ({} kills while recovering, {} data directories) in {:.0} s, seed {}: 0 violations\n\
             checked {} acknowledged trades, {} in-flight writes found, {} found absent, {} offset commits, \
             {} changes to trades of earlier cycles, {} trade events audited, {} events taken live found in the log \
             ({} spans, {} retained away); {} lost requests sent again, {} answered as repeats; {} acknowledged creates \
             sent again by their buyer and by another; {} shard opens from a checkpoint \
             ({} records replayed), {} with segments removed by retention; money: {} lost requests sent \
             again, {} transfer checks",
            summary.cycles,
            summary.kills_while_recovering,
            summary.data_dirs,
            summary.seconds,
            seed,
            summary.acknowledged_trades_checked,
            summary.in_flight_found_present,
            summary.in_flight_found_absent,
            summary.offset_commits_checked,
            summary.older_trades_changed,
            summary.events_audited,
            summary.consumed_events_checked,
            summary.consumed_spans_checked,
            summary.consumed_spans_retained_away,
            summary.retries_sent,
            summary.retries_answered_as_repeat,
            summary.old_creates_repeated,
            summary.shard_opens_from_checkpoint,
            summary.replayed_records,
            summary.shard_opens_with_retained_log,
            summary.money_requests_retried,
            summary.money_transfer_checks
        );
    }
    Ok(())
}

/// Refuses a campaign longer than the process's open-file limit allows: each of the parent's
/// `opens` leaves one descriptor behind (see `checking_options`). Raise `ulimit -n`, or run
/// shorter campaigns.
fn check_descriptor_budget(opens: u64) -> anyhow::Result<()> {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let soft = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .and_then(|line| line.split_whitespace().nth(3))
        .and_then(|soft| soft.parse::<u64>().ok());
    match soft {
        Some(soft) if opens + 256 > soft => {
            bail!("{opens} engine opens need an open-file limit above {}; it is {soft} (ulimit -n)", opens + 256)
        }
        _ => Ok(()),
    }
}

/// The options of the checking parent's engine. One executor: glommio 0.9 keeps one eventfd of
/// every executor it ever ran (glommio issue 448), so each open costs the parent one
/// descriptor; see `check_descriptor_budget`.
fn checking_options(data: &Path) -> Options {
    Options { executors: Some(1), ..engine_options(data) }
}

/// A cycle that could not run for a reason outside the engine (its child could not be started):
/// reported as such, not as a violation.
#[derive(Debug)]
struct HarnessError(String);

impl std::fmt::Display for HarnessError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for HarnessError {}

/// One cycle: start the child (`child_exe`), kill it, merge its journals, reopen and verify
/// the engine in `data`.
fn run_cycle(
    args: &Args,
    rng: &mut fastrand::Rng,
    (data, root, child_exe): (&Path, &Path, &Path),
    (cycle, cycle_seed): (u64, u64),
    (model, money, audit): (&mut model::Model, &mut money::MoneyModel, &mut audit::Audit),
    watchdog: &Watchdog,
    summary: &mut Summary,
) -> anyhow::Result<()> {
    watchdog.enter(cycle, "starting and killing the child");
    let journal_dir = root.join("journal");
    if journal_dir.exists() {
        std::fs::remove_dir_all(&journal_dir)?;
    }
    std::fs::create_dir_all(&journal_dir)?;
    // An earlier cycle of this directory whose trades the child changes too (a third of the
    // time the directory's first, whose trades have left memory by its later cycles).
    let first_of_dir = cycle - cycle % args.cycles_per_dir;
    let old_cycle = match (cycle > first_of_dir, rng.u64(..3)) {
        (false, _) => None,
        (true, 0) => Some(first_of_dir),
        (true, _) => Some(rng.u64(first_of_dir..cycle)),
    };
    let old_buyer_base = old_cycle.map(|old| (old + 1) * 1_000_000);
    let stderr_path = root.join("child-stderr.log");
    let mut child = Command::new(child_exe)
        .arg("stress-child")
        .args(["--dir".as_ref(), data.as_os_str()])
        .args(["--journal".as_ref(), journal_dir.as_os_str()])
        .args(["--seed", &cycle_seed.to_string(), "--workers", &args.workers.to_string()])
        .args(["--buyer-base", &((cycle + 1) * 1_000_000).to_string()])
        .args(old_buyer_base.iter().flat_map(|base| ["--old-buyer-base".to_string(), base.to_string()]))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&stderr_path)?)
        .spawn()
        .map_err(|error| HarnessError(format!("starting the child {}: {error}", child_exe.display())))?;
    let stdout = child.stdout.take().expect("piped");
    let (ready_tx, ready_rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line == "READY" {
                let _ = ready_tx.send(());
            }
        }
    });
    let child_failed = |status: std::process::ExitStatus| {
        let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
        anyhow!("the child stopped by itself ({status}): {}", stderr.trim())
    };
    if rng.u64(..8) == 0 {
        // Kill during open and recovery, READY or not.
        std::thread::sleep(Duration::from_millis(rng.u64(..40)));
        summary.kills_while_recovering += u64::from(ready_rx.try_recv().is_err());
    } else {
        let delay = Duration::from_millis(1 + rng.u64(..args.run_ms_max));
        // Within the watchdog's limit, so that the child, not this process, is described.
        let open_limit = Duration::from_secs(60).min(Duration::from_secs(args.stall_secs) / 2);
        if ready_rx.recv_timeout(open_limit).is_err() {
            let kicks = std::fs::read_to_string(journal_dir.join(child::KICKS_FILE)).unwrap_or_default();
            let threads =
                format!("executor kicks sent in the child so far: {}\n", kicks.trim()) + &stuck::describe(child.id());
            let stuck_path = root.join("stuck-child.txt");
            let _ = std::fs::write(&stuck_path, &threads);
            let _ = child.kill();
            let status = child.wait()?;
            let context = format!(
                "the child did not open the engine within {open_limit:?}; its threads: {}",
                stuck_path.display()
            );
            return Err(child_failed(status).context(context));
        }
        std::thread::sleep(delay);
    }
    if let Some(status) = child.try_wait()? {
        return Err(child_failed(status));
    }
    child.kill()?;
    let status = child.wait()?;
    // Killed by our SIGKILL, not ended by anything of its own just before it.
    if std::os::unix::process::ExitStatusExt::signal(&status) != Some(9) {
        return Err(child_failed(status));
    }
    watchdog.enter(cycle, "merging the journals");
    for entry in std::fs::read_dir(&journal_dir)? {
        let entry = entry?;
        if entry.file_name() == child::KICKS_FILE {
            continue;
        }
        let entries = journal::read(&entry.path())?;
        summary.journal_entries += entries.len() as u64;
        let mut trades = Vec::with_capacity(entries.len());
        for entry in entries {
            match entry {
                journal::Entry::MoneySent { op, request } => money.sent(op, request)?,
                journal::Entry::MoneyAcked { request, outcome } => money.acked(&request, outcome)?,
                other => trades.push(other),
            }
        }
        summary.older_trades_changed += model.merge(trades)?;
    }
    watchdog.enter(cycle, "reopening the engine");
    let engine = Engine::open(checking_options(data)).context("reopening after the kill")?;
    for shard in engine.handle().stats_blocking()?.shards {
        summary.shard_opens_from_checkpoint += u64::from(shard.opened.checkpoint.is_some());
        summary.replayed_records += shard.opened.replayed_records;
        summary.shard_opens_with_retained_log += u64::from(shard.log_first > 0);
    }
    watchdog.enter(cycle, "checking the trades");
    let checked = model.verify(&engine.handle()).and_then(|mut checked| {
        watchdog.enter(cycle, "sending lost trade requests again");
        model.retry_lost(&engine.handle(), &mut checked)?;
        watchdog.enter(cycle, "reading what the child's consumer took from the log again");
        let delivered = delivered::check(&engine.handle(), &model.take_consumed())?;
        summary.consumed_spans_checked += delivered.spans;
        summary.consumed_events_checked += delivered.events;
        summary.consumed_spans_retained_away += delivered.spans_retained_away;
        watchdog.enter(cycle, "reading the settlement stream on and checking it holds every change");
        let expected = audit::Expected { states: model.held_states(), origins: model.held_origins() };
        summary.events_audited += audit.read_check_commit(&engine.handle(), &expected)?;
        watchdog.enter(cycle, "sending lost money requests again and checking the balances");
        Ok((checked, money.verify(&engine.handle())?))
    });
    watchdog.enter(cycle, "closing the engine");
    summary.executor_kicks += engine.handle().stats_blocking().map_or(0, |stats| stats.executor_kicks);
    let closed = engine.close();
    // A violation found by the check is the news; a failed close only after it.
    let (checked, money_checked) = checked?;
    closed.context("closing after the check")?;
    summary.money_requests_retried += money_checked.retried;
    summary.money_transfer_checks += money_checked.transfers_done;
    summary.acknowledged_trades_checked += checked.acknowledged_trades;
    summary.in_flight_found_present += checked.in_flight_present;
    summary.in_flight_found_absent += checked.in_flight_absent;
    summary.offset_commits_checked += checked.offset_commits;
    summary.retries_sent += checked.retries_sent;
    summary.retries_answered_as_repeat += checked.retries_answered_as_repeat;
    summary.old_creates_repeated += checked.old_creates_repeated;
    Ok(())
}

/// The step name that stops the watchdog.
const DONE: &str = "";

/// Ends the campaign when one step of a cycle runs past its limit: it prints the cycle, the
/// step and the seed, leaves the directories where they are, and exits with status 2 (the
/// stalled step's thread cannot be stopped from outside).
struct Watchdog {
    /// The cycle and step under way, and when the step began.
    step: Arc<Mutex<(u64, &'static str, Instant)>>,
}

impl Watchdog {
    fn start(limit: Duration, seed: u64, root: &Path) -> Watchdog {
        let step = Arc::new(Mutex::new((0, "starting", Instant::now())));
        let (watched, root) = (step.clone(), root.to_path_buf());
        std::thread::spawn(move || loop {
            std::thread::sleep(Duration::from_secs(1).min(limit));
            let (cycle, name, since) = *watched.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            if name == DONE {
                return;
            }
            if since.elapsed() > limit {
                let stuck_path = root.join("stuck-campaign.txt");
                let kicks =
                    format!("executor kicks sent in this process so far: {}\n", tradeshard_engine::kicks_in_process());
                let _ = std::fs::write(&stuck_path, kicks + &stuck::describe(std::process::id()));
                eprintln!(
                    "stress: STALLED in cycle {cycle} (seed {seed}): {name} took more than {} s; the directories are \
                     kept in {}, what each thread was doing in {}",
                    limit.as_secs(),
                    root.display(),
                    stuck_path.display()
                );
                std::process::exit(2);
            }
        });
        Watchdog { step }
    }

    fn enter(&self, cycle: u64, name: &'static str) {
        *self.step.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = (cycle, name, Instant::now());
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.enter(0, DONE);
    }
}
