//! Crash the engine for real: a child process writes trades and reports each acknowledgement
//! on stdout, the parent kills it with SIGKILL mid-stream, reopens the directory, and checks
//! that every acknowledged write is there exactly once with its acknowledged state.
//!
//! The child is this same test binary, re-run with `TRADESHARD_CRASH_CHILD_DIR` set, which
//! makes `child_process_entry_point` write instead of returning at once.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tradeshard_engine::{Engine, TradeId, TradeStatus};
use tradeshard_tests::{engine_options, new_trade};

const CHILD_ENV: &str = "TRADESHARD_CRASH_CHILD_DIR";

/// Not a test of its own: the body of the child process (returns at once unless the parent
/// started this binary as its child).
#[test]
fn child_process_entry_point() {
    let Ok(dir) = std::env::var(CHILD_ENV) else { return };
    let offset: u64 = std::env::var("TRADESHARD_CRASH_CHILD_OFFSET").unwrap().parse().unwrap();
    let engine = Engine::open(engine_options(std::path::Path::new(&dir), 2, 2)).unwrap();
    let handle = engine.handle();
    let writers: Vec<_> = (0..8u64)
        .map(|writer| {
            let handle = handle.clone();
            std::thread::spawn(move || {
                for order in 0.. {
                    // User id 0 is refused (`ZeroUserId`): buyers count from 1.
                    let buyer = offset + writer * 1_000_000 + order + 1;
                    let receipt = or_exit(handle.create_trade_blocking(new_trade(buyer, order, 100 + order)));
                    println!("ACK created {} {}", receipt.id.0, receipt.amount);
                    if order % 2 == 0 {
                        or_exit(handle.pay_blocking(receipt.id));
                        println!("ACK paid {}", receipt.id.0);
                    }
                }
            })
        })
        .collect();
    for writer in writers {
        writer.join().unwrap();
    }
}

/// A failed write ends the child at once (no unwinding, no backtrace to print first), so the
/// parent sees the acknowledgements stop and reads the reason on stderr instead of the other
/// writers hiding it.
fn or_exit<T>(outcome: Result<T, tradeshard_engine::Error>) -> T {
    outcome.unwrap_or_else(|error| {
        eprintln!("write failed: {error:?}");
        std::process::exit(6)
    })
}

/// Runs the child until it has acknowledged at least `acks` writes, then SIGKILLs it. Returns
/// the acknowledgements and what the child wrote on stderr (which explains an early end).
fn run_child_and_kill(dir: &std::path::Path, offset: u64, acks: usize) -> (Vec<String>, String) {
    let stderr_path = dir.with_extension("child-stderr");
    let stderr_file = std::fs::File::create(&stderr_path).unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_process_entry_point", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, dir)
        .env("TRADESHARD_CRASH_CHILD_OFFSET", offset.to_string())
        .stdout(Stdio::piped())
        .stderr(stderr_file)
        .spawn()
        .unwrap();
    let mut lines = Vec::new();
    let reader = BufReader::new(child.stdout.take().unwrap());
    let started = Instant::now();
    for line in reader.lines() {
        let line = line.unwrap();
        // The test harness may print its own words before the first line on the same line.
        if let Some(at) = line.find("ACK ") {
            lines.push(line[at + 4..].to_string());
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
        let (lines, stderr) = run_child_and_kill(dir.path(), cycle * 100_000_000, 300 + 200 * cycle as usize);
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
