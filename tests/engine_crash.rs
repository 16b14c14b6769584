//! Crash the engine for real: a child process writes trades and reports each acknowledgement
//! on stdout, the parent kills it with SIGKILL mid-stream, reopens the directory, and checks
//! that every acknowledged write is there exactly once with its acknowledged state.
//!
//! The child is the `engine_child` binary of this package (`bin/engine_child.rs`).

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tradeshard_engine::{Engine, TradeId, TradeStatus};
use tradeshard_tests::engine_options;

/// Runs the child until it has acknowledged at least `acks` writes, then SIGKILLs it. Returns
/// the acknowledgements and what the child wrote on stderr (which explains an early end).
fn run_child_and_kill(dir: &std::path::Path, offset: u64, acks: usize) -> (Vec<String>, String) {
    let stderr_path = dir.with_extension("child-stderr");
    let stderr_file = std::fs::File::create(&stderr_path).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_engine_child"))
        .arg("crash-writer")
        .arg(dir)
        .arg(offset.to_string())
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
