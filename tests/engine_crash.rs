//! Crash the engine for real: a child process writes trades and reports each acknowledgement
//! on stdout, the parent kills it with SIGKILL mid-stream, reopens the directory, and checks
//! that every acknowledged write is there exactly once with its acknowledged state.
//!
//! The child is the `engine_child` binary of this package (`bin/engine_child.rs`).

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tradeshard_engine::{Currency, Engine, Error, Options, Refusal, TradeId, TradeStatus};
use tradeshard_tests::engine_options;

/// Runs the child (`engine_child MODE DIR ARGS...`) until it has acknowledged at least `acks`
/// writes, then SIGKILLs it. Returns the acknowledgements and what the child wrote on stderr
/// (which explains an early end).
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
    let mut lines = Vec::new();
    let reader = BufReader::new(child.stdout.take().unwrap());
    let started = Instant::now();
    for line in reader.lines() {
        let line = line.unwrap();
        if let Some(ack) = line.strip_prefix("ACK ") {
            lines.push(ack.to_string());
        }
        if lines.len() >= acks || started.elapsed() > Duration::from_secs(60) {
            break;
        }
    }
    let exited_early = child.try_wait().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
    let _ = std::fs::remove_file(&stderr_path);
    if let Some(status) = exited_early {
        panic!("the child ended by itself ({status}) after {} acknowledgements; its stderr:\n{stderr}", lines.len());
    }
    (lines, stderr)
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

/// Kill -9 under transfers within and across shards: after each reopen, recovery leaves no
/// activity unfinished (the child's were past their 50 ms deadline or decided), no account
/// holds a reservation, no money is in transit, the balances sum to the deposits, and every
/// acknowledged transfer, sent again, answers as it was acknowledged. Twenty cycles, or
/// `TRADESHARD_KILL_CYCLES` (the long run in `TESTING.md`).
#[test]
fn transfers_end_once_and_conserve_money_after_kill_9() {
    let cycles: usize = std::env::var("TRADESHARD_KILL_CYCLES").ok().and_then(|n| n.parse().ok()).unwrap_or(20);
    let (mut in_doubt_at_open, mut frozen_at_open) = (0u64, 0u64);
    let dir = tempfile::tempdir().unwrap();
    let options =
        || Options { activity_recovery_interval: Duration::from_millis(20), ..engine_options(dir.path(), 2, 2) };
    let cny = Currency::parse("CNY").unwrap();
    let mut acked: Vec<(u64, u64, u64, String, bool)> = Vec::new();
    for cycle in 0..cycles {
        let (lines, stderr) = run_child_and_kill("transfer-writer", dir.path(), &[], 16 + 200 + 100 * (cycle % 3));
        let transfers: Vec<_> = lines.iter().filter(|line| !line.starts_with("deposit")).collect();
        assert!(transfers.len() >= 200, "cycle {cycle}: {} transfers acknowledged; stderr:\n{stderr}", transfers.len());
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
        assert_eq!(handle.money_in_transit_blocking().unwrap().values().sum::<i128>(), 0);
        let mut sum = 0;
        for user in 1..=16 {
            let balance = handle.balance_blocking(user, "CNY").unwrap();
            assert_eq!((balance.frozen, balance.incoming), (0, 0), "cycle {cycle}: user {user} {balance:?}");
            sum += balance.available;
        }
        assert_eq!(sum, 16_000, "cycle {cycle}: balances sum to the deposits");
        assert_eq!(handle.account_totals_blocking().unwrap()[&cny], 16_000);
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
    println!("kill -9 under transfers: {cycles} cycles; {in_doubt_at_open} activities in doubt and {frozen_at_open} frozen at the opens, all driven to their end");
}
