//! Crash the engine for real: a child process writes trades and reports each acknowledgement
//! on stdout, the parent kills it with SIGKILL mid-stream, reopens the directory, and checks
//! that every acknowledged write is there exactly once with its acknowledged state.
//!
//! The child is the `engine_child` binary of this package (`bin/engine_child.rs`).

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tradeshard_engine::{
    CheckAnswer, CheckFuture, ConsumerConfig, Currency, Engine, EngineHandle, Error, HalfMessage, MessageChecker,
    MessageCheckers, Options, Refusal, TradeId, TradeStatus,
};
use tradeshard_tests::engine_options;

/// Runs the child (`engine_child MODE DIR ARGS...`) until it has acknowledged at least `acks`
/// writes, then SIGKILLs it. Returns every acknowledgement it printed, those after the first
/// `acks` too, and what the child wrote on stderr (which explains an early end).
fn run_child_and_kill(mode: &str, dir: &std::path::Path, args: &[String], acks: usize) -> (Vec<String>, String) {
    let stderr_path = dir.with_extension("child-stderr");
    let stderr_file = std::fs::File::create(&stderr_path).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_engine_child"))
        .arg(mode)
        .arg(dir)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(stderr_file)
        .spawn()
        .unwrap();
    // Lines come through a thread, so that a child that falls silent (a hang) is seen as
    // such rather than blocking the parent's read forever.
    let (line_tx, line_rx) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line_tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut lines = Vec::new();
    let started = Instant::now();
    let mut silent = None;
    while lines.len() < acks && started.elapsed() < Duration::from_secs(60) {
        match line_rx.recv_timeout(CHILD_SILENCE_MAX) {
            Ok(line) => lines.extend(line.strip_prefix("ACK ").map(str::to_string)),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                silent = Some(threads_of(child.id()));
                break;
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    let exited_early = child.try_wait().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    reader.join().unwrap();
    // What the child printed before it died is acknowledged too (each line is one write).
    lines.extend(line_rx.try_iter().filter_map(|line| line.strip_prefix("ACK ").map(str::to_string)));
    let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
    let _ = std::fs::remove_file(&stderr_path);
    if let Some(threads) = silent {
        panic!(
            "the child printed nothing for {CHILD_SILENCE_MAX:?} after {} acknowledgements (a hang); its threads \
             and where each waited: {threads}; its stderr:\n{stderr}",
            lines.len()
        );
    }
    if let Some(status) = exited_early {
        panic!("the child ended by itself ({status}) after {} acknowledgements; its stderr:\n{stderr}", lines.len());
    }
    (lines, stderr)
}

/// How long a child may print nothing before it is taken for hung.
const CHILD_SILENCE_MAX: Duration = Duration::from_secs(30);

/// Each thread of process `pid` with the kernel function it waits in, for the report of a
/// hang.
fn threads_of(pid: u32) -> String {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return "(not readable)".into();
    };
    let read = |path: std::path::PathBuf| std::fs::read_to_string(path).unwrap_or_default().trim().to_string();
    let mut threads: Vec<String> = tasks
        .filter_map(Result::ok)
        .map(|task| format!("{} in {}", read(task.path().join("comm")), read(task.path().join("wchan"))))
        .collect();
    threads.sort();
    threads.join(", ")
}

#[test]
fn acknowledged_writes_survive_kill_9_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut expected: HashMap<TradeId, (u64, TradeStatus)> = HashMap::new();
    for cycle in 0..3u64 {
        let offset = [(cycle * 100_000_000).to_string()];
        let (lines, stderr) = run_child_and_kill("crash-writer", dir.path(), &offset, 300 + 200 * cycle as usize);
        assert!(
            lines.len() >= 300,
            "cycle {cycle}: the child acknowledged only {} writes; its stderr:\n{stderr}",
            lines.len()
        );
        for line in lines {
            let mut words = line.split(' ');
            let (what, id) = (words.next().unwrap(), TradeId(words.next().unwrap().parse().unwrap()));
            match what {
                "created" => {
                    expected.insert(id, (words.next().unwrap().parse().unwrap(), TradeStatus::Created));
                }
                _ => expected.get_mut(&id).expect("paid after created").1 = TradeStatus::Paid,
            }
        }
        let engine = Engine::open(engine_options(dir.path(), 2, 2)).unwrap();
        let handle = engine.handle();
        for (id, (amount, status)) in &expected {
            let trade =
                handle.get_blocking(*id).unwrap_or_else(|e| panic!("cycle {cycle}: acknowledged {id} lost: {e}"));
            assert_eq!(trade.amount, *amount);
            // A pay acknowledged before the kill is there; one in flight may be there too.
            assert!(trade.status == *status || (*status == TradeStatus::Created && trade.status == TradeStatus::Paid));
        }
        let stats = handle.stats_blocking().unwrap();
        assert!(stats.trades >= expected.len() as u64);
        // Every acknowledged create's order number names it, its claim confirmed again by
        // the open when the confirmation was lost with the process.
        for id in expected.keys().take(500) {
            let trade = handle.get_blocking(*id).unwrap();
            let by_order = handle.get_by_order_blocking(trade.merchant_id, &trade.merchant_order_no);
            assert_eq!(by_order.map(|found| found.id).ok(), Some(*id), "cycle {cycle}: order number of {id}");
        }
        // Exactly once: every buyer of a create appears in one trade only.
        for (id, _) in expected.iter().take(50) {
            let buyer = handle.get_blocking(*id).unwrap().buyer_id;
            assert_eq!(
                handle.list_user_trades_blocking(buyer, 10, None).unwrap().len(),
                1,
                "buyer {buyer} has one trade"
            );
        }
        engine.close().unwrap();
    }
}

/// Kill -9 under transfers within and across shards and trades paid from balances: after each
/// reopen, recovery leaves no activity unfinished (the child's were past their 50 ms deadline
/// or decided, settlements' credits decided), no account holds a reservation, every
/// acknowledged payment, refund and settlement is there, the money in transit is what paid
/// trades hold, balances plus that sum to the deposits, and every acknowledged transfer, sent
/// again, answers as it was acknowledged (every other cycle after a checkpoint moved the
/// ended activities to runs). Twenty cycles, or
/// `TRADESHARD_KILL_CYCLES` (the long run in `TESTING.md`).
#[test]
fn transfers_end_once_and_conserve_money_after_kill_9() {
    let cycles: usize = std::env::var("TRADESHARD_KILL_CYCLES").ok().and_then(|n| n.parse().ok()).unwrap_or(20);
    let (mut in_doubt_at_open, mut frozen_at_open, mut settled_trades) = (0u64, 0u64, 0usize);
    let dir = tempfile::tempdir().unwrap();
    let options =
        || Options { activity_recovery_interval: Duration::from_millis(20), ..engine_options(dir.path(), 2, 2) };
    let cny = Currency::parse("CNY").unwrap();
    let mut acked: Vec<(u64, u64, u64, String, bool)> = Vec::new();
    for cycle in 0..cycles {
        let (lines, stderr) = run_child_and_kill("transfer-writer", dir.path(), &[], 16 + 200 + 100 * (cycle % 3));
        let is_transfer = |line: &&String| line.starts_with("transfer") || line.starts_with("cancelled");
        let transfers: Vec<_> = lines.iter().filter(is_transfer).collect();
        assert!(transfers.len() >= 100, "cycle {cycle}: {} transfers acknowledged; stderr:\n{stderr}", transfers.len());
        let trades: Vec<(&str, TradeId)> = lines
            .iter()
            .filter_map(|line| line.split_once(' '))
            .filter(|(what, _)| ["paid", "refunded", "settled"].contains(what))
            .map(|(what, id)| (what, TradeId(id.parse().unwrap())))
            .collect();
        for line in transfers {
            let words: Vec<&str> = line.split(' ').collect();
            let number = |at: usize| words[at].parse::<u64>().unwrap();
            let request_no = format!("c{cycle}-{}", words[4]);
            acked.push((number(1), number(2), number(3), request_no, words[0] == "transfer"));
        }
        let engine = Engine::open(options()).unwrap();
        let handle = engine.handle();
        let opened = handle.stats_blocking().unwrap();
        let listed = handle.activities_in_doubt_blocking().unwrap();
        assert!(listed
            .iter()
            .all(|(_, _, entry)| !matches!(entry.state, tradeshard_engine::ActivityState::Completed(_))));
        frozen_at_open += (1..=16).map(|user| handle.balance_blocking(user, "CNY").unwrap().frozen).sum::<u64>();
        in_doubt_at_open += opened.shards.iter().map(|shard| shard.activities_in_doubt).sum::<u64>();
        let started = Instant::now();
        while handle.stats_blocking().unwrap().shards.iter().any(|shard| shard.activities_in_doubt > 0) {
            assert!(started.elapsed() < Duration::from_secs(10), "cycle {cycle}: activities left in doubt");
            std::thread::sleep(Duration::from_millis(10));
        }
        // Every trade is paid from its buyer's balance: what the paid ones not settled hold is
        // the money in transit, once no activity is in doubt.
        for (what, id) in &trades {
            let trade = handle.get_blocking(*id).unwrap();
            let at_least = match *what {
                "paid" => [TradeStatus::Paid, TradeStatus::Refunded, TradeStatus::Settled].contains(&trade.status),
                "refunded" => trade.refunded_amount > 0 && trade.status != TradeStatus::Paid,
                _ => trade.status == TradeStatus::Settled,
            };
            assert!(at_least, "cycle {cycle}: acknowledged {what}, found {trade:?}");
        }
        let mut held = 0;
        for user in 1..=16 {
            for trade in handle.list_user_trades_blocking(user, 10_000, None).unwrap() {
                if matches!(trade.status, TradeStatus::Paid | TradeStatus::Refunded) {
                    held += i128::from(trade.amount - trade.refunded_amount);
                }
            }
        }
        let in_transit = handle.money_in_transit_blocking().unwrap().values().sum::<i128>();
        assert_eq!(in_transit, held, "cycle {cycle}: money in transit is what paid trades hold");
        let mut sum = 0;
        for user in 1..=16 {
            let balance = handle.balance_blocking(user, "CNY").unwrap();
            assert_eq!((balance.frozen, balance.incoming), (0, 0), "cycle {cycle}: user {user} {balance:?}");
            sum += balance.available;
        }
        assert_eq!(i128::from(sum) + held, 16_000, "cycle {cycle}: balances and trades hold the deposits");
        assert_eq!(handle.account_totals_blocking().unwrap()[&cny] as i128 + in_transit, 16_000);
        settled_trades += trades.iter().filter(|(what, _)| *what == "settled").count();
        // Every other cycle, a checkpoint first moves the completed activities and their ended
        // branches to runs, where the retries below find them.
        if cycle % 2 == 1 {
            handle.checkpoint_blocking().unwrap();
        }
        for (from, to, amount, request_no, committed) in acked.iter().filter(|a| a.3.starts_with(&format!("c{cycle}-")))
        {
            let request_no = request_no.split_once('-').unwrap().1;
            match handle.transfer_blocking(*from, *to, "CNY", *amount, request_no) {
                Ok(receipt) => assert!(*committed && receipt.replayed, "cycle {cycle}: {request_no} {receipt:?}"),
                Err(Error::Refused(Refusal::TransferCancelled { .. })) => assert!(!committed, "{request_no}"),
                Err(other) => panic!("cycle {cycle}: retry of {request_no}: {other}"),
            }
        }
        engine.close().unwrap();
        acked.clear();
        // The next child starts over with the same request numbers: a fresh directory.
        for entry in std::fs::read_dir(dir.path()).unwrap() {
            let path = entry.unwrap().path();
            let _ = std::fs::remove_dir_all(&path).or_else(|_| std::fs::remove_file(&path));
        }
    }
    println!("kill -9 under transfers: {cycles} cycles; {in_doubt_at_open} activities in doubt and {frozen_at_open} frozen at the opens, all driven to their end; {settled_trades} acknowledged settlements of trades paid from balances");
}

/// Commits half messages whose payload asks for it (`-c`), rolls back the rest.
struct PayloadChecker;

impl MessageChecker for PayloadChecker {
    fn check(&self, message: &HalfMessage) -> CheckFuture<'_> {
        let commit = String::from_utf8_lossy(&message.entry.body.payload).contains("-c");
        Box::pin(async move {
            match commit {
                true => CheckAnswer::Commit,
                false => CheckAnswer::Rollback,
            }
        })
    }
}

/// Every message of topic `t` delivered to `group` from its committed offsets on, as
/// (payload, attempt), in the order delivered; then commits past them (a group that commits is
/// live, so retention keeps what it has not read).
fn read_topic(handle: &EngineHandle, group: &str) -> Vec<(String, u8)> {
    let mut consumer = handle.consumer(ConsumerConfig::topics(group, &["t"])).unwrap();
    let mut all = Vec::new();
    loop {
        let got = consumer.poll_messages_blocking(4096, Duration::from_millis(100)).unwrap();
        if got.is_empty() {
            consumer.commit_blocking().unwrap();
            return all;
        }
        all.extend(got.into_iter().map(|m| (String::from_utf8(m.payload).unwrap(), m.attempt)));
    }
}

/// Kill -9 under publishes, half messages and nacks: after each reopen, the checker resolves
/// every half message left (the child's unresolved ones and those whose commit the kill cut),
/// every retry scheduled comes due, and then: every acknowledged publish is delivered exactly
/// once, a producer's messages of one key in order; every half message asked to commit is
/// delivered exactly once and none asked to roll back ever; retries reach `billing` alone, and
/// every nack acknowledged is retried (seen by the child, or by this test reading on as
/// `billing`); every dead letter acknowledged is kept. An `audit` group reads on from cycle to
/// cycle. Ten cycles, or `TRADESHARD_KILL_CYCLES`.
#[test]
fn messages_are_delivered_once_and_half_messages_resolved_after_kill_9() {
    let cycles: usize = std::env::var("TRADESHARD_KILL_CYCLES").ok().and_then(|n| n.parse().ok()).unwrap_or(10);
    let dir = tempfile::tempdir().unwrap();
    let options = || Options {
        checkers: MessageCheckers::default().with("t", PayloadChecker),
        half_check_delay: Duration::ZERO,
        half_check_interval: Duration::from_millis(20),
        activity_recovery_interval: Duration::from_millis(20),
        ..tradeshard_tests::message_options(dir.path())
    };
    let (mut acked, mut halves_at_open, mut retries) = (Vec::new(), 0, 0);
    let mut count: HashMap<String, usize> = HashMap::new();
    let mut last_of_key: HashMap<(String, u64), u64> = HashMap::new();
    let mut retried: std::collections::HashSet<String> = std::collections::HashSet::new();
    for cycle in 0..cycles {
        let (lines, stderr) = run_child_and_kill("message-writer", dir.path(), &[cycle.to_string()], 600);
        assert!(lines.len() >= 600, "cycle {cycle}: {} acknowledgements; stderr:\n{stderr}", lines.len());
        acked.extend(lines);
        let engine = Engine::open(options()).unwrap();
        let handle = engine.handle();
        halves_at_open += handle.half_messages_blocking().unwrap().len();
        let started = Instant::now();
        let pending = |stats: &tradeshard_engine::EngineStats| {
            stats.shards.iter().map(|shard| shard.half_messages + shard.scheduled_messages).sum::<u64>()
        };
        while pending(&handle.stats_blocking().unwrap()) > 0 {
            assert!(started.elapsed() < Duration::from_secs(20), "cycle {cycle}: half or scheduled messages left");
            std::thread::sleep(Duration::from_millis(10));
        }
        let audit = read_topic(&handle, "audit");
        assert!(audit.iter().all(|(_, attempt)| *attempt == 0), "retries reach their group alone");
        for (payload, _) in &audit {
            *count.entry(payload.clone()).or_default() += 1;
            if let Some(rest) = payload.strip_prefix('p') {
                let fields: Vec<&str> = rest.trim_end_matches("-nack").trim_end_matches("-dead").split('.').collect();
                let n: u64 = fields[2].parse().unwrap();
                let key = (format!("{}.{}", fields[0], fields[1]), n % 5);
                let last = last_of_key.insert(key, n);
                assert!(last.is_none_or(|last| last < n), "cycle {cycle}: {payload} after a later message of its key");
            }
            assert!(!payload.contains("-r"), "cycle {cycle}: {payload} was to roll back, and was delivered");
        }
        for line in &acked {
            let (what, payload) = line.split_once(' ').unwrap();
            match what {
                "publish" => assert_eq!(count.get(payload), Some(&1), "cycle {cycle}: {payload} delivered"),
                "prepared" if payload.contains("-c") => {
                    assert_eq!(count.get(payload), Some(&1), "cycle {cycle}: {payload} committed once")
                }
                _ => {}
            }
        }
        for (payload, attempt) in read_topic(&handle, "billing") {
            if attempt > 0 {
                retried.insert(payload);
            }
        }
        let dead: Vec<String> = handle
            .dead_letters_blocking("billing")
            .unwrap()
            .into_iter()
            .map(|letter| String::from_utf8(letter.entry.body.payload).unwrap())
            .collect();
        retried.extend(acked.iter().filter_map(|line| line.strip_prefix("retried ").map(str::to_string)));
        for line in &acked {
            match line.split_once(' ').unwrap() {
                ("nack", payload) => {
                    assert!(retried.contains(payload), "cycle {cycle}: {payload} nacked, never retried");
                    retries += 1;
                }
                ("dead", payload) => assert!(dead.iter().any(|p| p == payload), "{payload} dead-lettered"),
                _ => {}
            }
        }
        engine.close().unwrap();
    }
    println!(
        "kill -9 under messages: {cycles} cycles, {} acknowledgements; {halves_at_open} half messages at the opens, \
         all resolved by the checker; {} nacks, each found retried ({retries} checks over the cycles); {} dead \
         letters kept",
        acked.len(),
        acked.iter().filter(|line| line.starts_with("nack ")).count(),
        acked.iter().filter(|line| line.starts_with("dead ")).count()
    );
}
