//! The `tradeshard` command as scripts use it: `load`, `inspect`, `wal-bench`, `stress` and `compare` run,
//! print the JSON keys they promise, and refuse bad arguments with a non-zero exit.

use std::process::Command;

fn tradeshard(args: &[&str], dir: &std::path::Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tradeshard")).args(args).current_dir(dir).output().expect("tradeshard runs")
}

fn json(output: &std::process::Output) -> serde_json::Value {
    assert!(output.status.success(), "exit {:?}: {}", output.status, String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).expect("stdout is one JSON object")
}

#[test]
fn load_reports_json_and_verifies_every_trade() {
    let dir = tempfile::tempdir().unwrap();
    let output = tradeshard(&["load", "--ops", "3000", "--inflight", "32", "--users", "100", "--json"], dir.path());
    let report = json(&output);
    for key in ["trades_per_sec", "fsyncs_per_sec", "records_per_fsync"] {
        assert!(report[key].as_f64().is_some_and(|v| v > 0.0), "{key} in {report}");
    }
    // Trade records compress: the logs store fewer bytes than they were given.
    let stored_per_raw = report["log_stored_per_raw_byte"].as_f64().unwrap();
    assert!(stored_per_raw > 0.0 && stored_per_raw < 1.0, "log_stored_per_raw_byte {stored_per_raw}");
    let create = &report["ops"]["create"];
    assert!(create["count"].as_u64().unwrap() > 0 && create["ops_per_sec"].as_f64().unwrap() > 0.0);
    for percentile in ["p50", "p99", "p999", "max"] {
        assert!(create["latency_us"][percentile].as_u64().is_some(), "{percentile}");
    }
    assert_eq!(report["mismatches"], 0);
    assert!(report["verified"].as_u64().unwrap() >= create["count"].as_u64().unwrap() / 2);
    assert!(std::fs::read_dir(dir.path()).unwrap().next().is_none(), "the temporary data directory is removed");
}

/// With `--on-executors`, the mixed workload's tasks run on the engine's executors: every
/// acknowledged trade reads back, every retry answers its original, and requests ran in place.
#[test]
fn load_on_the_executors_verifies_every_trade_and_retry() {
    let dir = tempfile::tempdir().unwrap();
    let args = ["load", "--on-executors", "--ops", "3000", "--inflight", "32", "--retry-ratio", "0.1", "--json"];
    let report = json(&tradeshard(&args, dir.path()));
    assert_eq!(report["on_executors"], true, "{report}");
    let creates = report["ops"]["create"]["count"].as_u64().unwrap();
    assert!(creates > 500, "{report}");
    let ops: u64 = report["ops"].as_object().unwrap().values().map(|op| op["count"].as_u64().unwrap()).sum();
    assert!(ops > 2_000 && ops <= 3_000, "the parts share --ops: {report}");
    assert!(report["requests_in_place"].as_u64().unwrap() > 0, "{report}");
    assert_eq!((report["mismatches"].as_u64(), report["errors"].as_u64()), (Some(0), Some(0)), "{report}");
    assert!(report["verified"].as_u64().unwrap() >= creates, "every part's creates read back: {report}");
    assert!(report["retries_sent"].as_u64().unwrap() > 0, "{report}");
    assert_eq!((report["retry_mismatches"].as_u64(), report["order_mismatches"].as_u64()), (Some(0), Some(0)));
    assert!(report["orders_checked"].as_u64().unwrap() >= creates, "every part's orders looked up: {report}");
}

/// Checkpoints during the timed phase are reported with the time their turns took.
#[test]
fn load_reports_what_its_checkpoints_took() {
    let dir = tempfile::tempdir().unwrap();
    let args = ["load", "--ops", "20000", "--inflight", "64", "--checkpoint-every", "50ms", "--json"];
    let report = json(&tradeshard(&args, dir.path()));
    assert!(report["checkpoints_written"].as_u64().is_some_and(|n| n > 0), "{report}");
    for key in ["checkpoint_busy_ms", "checkpoint_busy_ns_per_run_entry"] {
        assert!(report[key].as_f64().is_some_and(|v| v > 0.0), "{key} in {report}");
    }
    assert!(report["run_entries_written"].as_u64().is_some_and(|n| n > 0), "{report}");
    assert!(report["merge_busy_ms"].as_f64().is_some(), "{report}");
}

/// With `--report-every`, the transfer workload reports each interval as it ends: its rate and
/// p99, resident memory, the directory's bytes, the money's state held in memory and the room kept
/// for the next checkpoint's sort.
#[test]
fn load_transfers_report_every_interval() {
    let dir = tempfile::tempdir().unwrap();
    let args = [
        "load",
        "--workload",
        "transfer",
        "--duration",
        "6s",
        "--report-every",
        "500ms",
        "--inflight",
        "32",
        "--users",
        "200",
        "--json",
    ];
    let output = tradeshard(&args, dir.path());
    let report = json(&output);
    let intervals = report["intervals"].as_array().unwrap_or_else(|| panic!("intervals in {report}"));
    // An interval ends at the first 200 ms tick of the reporting loop past 500 ms, so the run
    // holds close to ten. Five are what `resident_growth_after_warmup` needs: ticks twice as
    // slow on a loaded host still leave them.
    assert!(intervals.len() >= 5, "{report}");
    let lines = String::from_utf8_lossy(&output.stderr).lines().filter(|l| l.starts_with("interval: ")).count();
    assert_eq!(lines, intervals.len(), "each interval is printed as it ends");
    let mut at_before = 0.0;
    let mut answered = 0;
    for interval in intervals {
        let at = interval["at_sec"].as_f64().unwrap();
        assert!(at > at_before, "{interval}");
        at_before = at;
        let ops_per_sec = interval["ops_per_sec"].as_f64().unwrap_or_else(|| panic!("ops_per_sec in {interval}"));
        let p99_us = interval["p99_us"].as_u64().unwrap_or_else(|| panic!("p99_us in {interval}"));
        assert_eq!(ops_per_sec > 0.0, p99_us > 0, "an interval's answers give it its p99: {interval}");
        answered += usize::from(ops_per_sec > 0.0);
        for key in ["resident_bytes", "disk_bytes"] {
            assert!(interval[key].as_u64().is_some_and(|v| v > 0), "{key} in {interval}");
        }
        for key in ["account_requests", "branches", "activities", "sort_room_bytes"] {
            assert!(interval[key].as_u64().is_some(), "{key} in {interval}");
        }
    }
    // Each interval counts the answers within it. A stall of a loaded host may leave one
    // without any; most have some.
    assert!(answered * 2 > intervals.len(), "most intervals have answers: {report}");
    assert!(report["resident_growth_after_warmup"].as_f64().is_some(), "{report}");
    assert_eq!(report["conservation_ok"], true, "{report}");
}

/// With `--rate`, the transfer workload sends on schedule (an open loop): at most rate times
/// duration transfers, where 32 tasks left to themselves send many more.
#[test]
fn load_transfers_keep_to_the_rate_asked() {
    let dir = tempfile::tempdir().unwrap();
    let args = [
        "load",
        "--workload",
        "transfer",
        "--rate",
        "500",
        "--duration",
        "2s",
        "--inflight",
        "32",
        "--users",
        "200",
        "--json",
    ];
    let report = json(&tradeshard(&args, dir.path()));
    let sent = report["transfers"].as_u64().unwrap()
        + report["cancelled"].as_u64().unwrap()
        + report["refused"].as_u64().unwrap();
    // The rate is a ceiling, which the upper bound checks. How many of the 1,000 slots are
    // answered in time depends on the host (a debug build beside other tests may answer half
    // or fewer), so the lower bound only shows that the load ran.
    assert!((100..=1_100).contains(&sent), "at most 500 a second for 2 s: {report}");
    assert_eq!(report["conservation_ok"], true, "{report}");
}

/// A rate so low that most tasks' first slot lies past the duration: the run ends at its
/// duration, not at the last slot a task had started waiting for (25.5 s here).
#[test]
fn load_at_a_low_rate_ends_at_its_duration() {
    let dir = tempfile::tempdir().unwrap();
    let args = ["load", "--workload", "ingest", "--rate", "10", "--duration", "1s", "--users", "50", "--json"];
    let report = json(&tradeshard(&args, dir.path()));
    let elapsed = report["elapsed_sec"].as_f64().unwrap();
    assert!(elapsed < 5.0, "a 1 s run took {elapsed} s: {report}");
    let created = report["ops"]["create"]["count"].as_u64().unwrap();
    assert!((1..=12).contains(&created), "10 a second for 1 s: {report}");
}

/// Transfers, publishes and half messages run again on the directory of an earlier run: the
/// money and the messages that run left are counted apart, so the checks hold.
#[test]
fn load_transfers_and_messages_run_again_on_their_directory() {
    let dir = tempfile::tempdir().unwrap();
    for workload in ["transfer", "publish", "half-messages"] {
        let data = format!("d-{workload}");
        let args = [
            "load",
            "--workload",
            workload,
            "--ops",
            "500",
            "--inflight",
            "16",
            "--users",
            "100",
            "--dir",
            &data,
            "--json",
        ];
        for run in 0..2 {
            let report = json(&tradeshard(&args, dir.path()));
            match workload {
                "transfer" => assert_eq!(report["conservation_ok"], true, "run {run}: {report}"),
                _ => assert_eq!(report["delivered_ok"], true, "run {run}: {report}"),
            }
        }
    }
}

/// `--ops` is the run's operations in all, shared among `--clients`.
#[test]
fn load_ops_are_shared_among_client_threads() {
    let dir = tempfile::tempdir().unwrap();
    let args = ["load", "--workload", "read", "--read-trades", "500", "--ops", "1001", "--clients", "2", "--json"];
    let report = json(&tradeshard(&args, dir.path()));
    let gets = report["ops"]["get"]["count"].as_u64().unwrap();
    assert_eq!(gets, 1001, "{report}");
}

/// The transfer workload funds its users, moves money within and across shards, and counts it
/// at the end: balances plus money in transit equal the deposits, nothing left in doubt.
#[test]
fn load_transfers_report_their_rate_and_conserve_money() {
    let dir = tempfile::tempdir().unwrap();
    let args = [
        "load",
        "--workload",
        "transfer",
        "--ops",
        "3000",
        "--inflight",
        "32",
        "--users",
        "200",
        "--dir",
        "d",
        "--json",
    ];
    let report = json(&tradeshard(&args, dir.path()));
    assert!(report["transfers_per_sec"].as_f64().is_some_and(|v| v > 0.0), "{report}");
    let transfers = report["transfers"].as_u64().unwrap();
    let cross = report["cross_shard"].as_u64().unwrap();
    assert!(transfers > 2_000 && cross > 500 && cross < transfers, "{report}");
    for percentile in ["p50", "p99", "p999", "max"] {
        assert!(report["latency_us"][percentile].as_u64().is_some(), "{percentile}");
    }
    assert_eq!(report["conservation_ok"], true, "{report}");
    assert_eq!(report["money_counted"].as_i64(), report["money_deposited"].as_i64());
    assert_eq!((report["in_transit_at_end"].as_i64(), report["errors"].as_u64()), (Some(0), Some(0)));
    // `inspect` counts the accounts, and lists no activity in doubt. The close's checkpoint
    // moved every completed activity and ended branch to runs, with the request numbers of the
    // deposits and of the transfers within a shard: memory holds none of them.
    let inspect = json(&tradeshard(&["inspect", "--dir", "d", "--json"], dir.path()));
    let shards = inspect["shards"].as_array().unwrap();
    let sum = |key: &str| shards.iter().map(|shard| shard[key].as_u64().unwrap()).sum::<u64>();
    assert_eq!(sum("accounts"), 200, "{inspect}");
    assert_eq!((sum("activities"), sum("branches"), sum("account_requests")), (0, 0, 0), "{inspect}");
    // A transfer across shards leaves its activity, which keeps the payer's branch, and the
    // payee's branch; the payer's branch is an entry of its own only when a checkpoint came
    // between its end and the activity's completion (a few of the 32 in flight at each).
    let in_runs = 200 + (transfers - cross) + 2 * cross;
    let entries = sum("key_run_entries");
    assert!(
        (in_runs..=in_runs + cross / 4).contains(&entries),
        "deposits, transfers within a shard, activities and the payees' branches: {in_runs} and at most \
         {} more, {entries} in runs: {inspect}",
        cross / 4
    );
    assert!(shards.iter().all(|shard| shard["activities_in_doubt"].as_array().is_some_and(Vec::is_empty)));
}

/// With `--on-executors`, the tasks run on the engine's executors, each sending its own
/// shards' payers' transfers, which the engine runs in place; the money is conserved.
#[test]
fn load_transfers_on_the_executors_run_in_place_and_conserve_money() {
    let dir = tempfile::tempdir().unwrap();
    let args: Vec<&str> =
        "load --workload transfer --on-executors --ops 3000 --inflight 32 --users 200 --json".split(' ').collect();
    let report = json(&tradeshard(&args, dir.path()));
    assert_eq!(report["on_executors"], true, "{report}");
    let (transfers, cross) = (report["transfers"].as_u64().unwrap(), report["cross_shard"].as_u64().unwrap());
    assert!(transfers > 2_000 && transfers <= 3_000 && cross > 500 && cross < transfers, "{report}");
    // Each transfer within a shard is one request, made on its payer's executor.
    assert!(report["requests_in_place"].as_u64().unwrap() >= transfers - cross, "{report}");
    assert_eq!(report["conservation_ok"], true, "{report}");
    assert_eq!((report["in_transit_at_end"].as_i64(), report["errors"].as_u64()), (Some(0), Some(0)));
}

/// With `--batch`, each request is a batch of transfers (`transfer_many`): every transfer is
/// counted as one alone, within a shard and across shards, and the money is conserved.
#[test]
fn load_transfers_in_batches_conserve_money() {
    let dir = tempfile::tempdir().unwrap();
    let args = ["load", "--workload", "transfer", "--batch", "16", "--ops", "3200", "--inflight", "4", "--json"];
    let report = json(&tradeshard(&args, dir.path()));
    assert_eq!((report["batch"].as_u64(), report["inflight"].as_u64()), (Some(16), Some(4)), "{report}");
    let (transfers, cross) = (report["transfers"].as_u64().unwrap(), report["cross_shard"].as_u64().unwrap());
    assert!(transfers > 2_400 && transfers <= 3_200 && cross > 600 && cross < transfers - 600, "{report}");
    assert!(report["latency_us"]["p99"].as_u64().is_some(), "{report}");
    assert_eq!(report["conservation_ok"], true, "{report}");
    assert_eq!((report["in_transit_at_end"].as_i64(), report["errors"].as_u64()), (Some(0), Some(0)));
}

/// With `--purchase-ratio`, half the requests are purchases: a trade paid from the buyer's
/// balance and settled to its merchant; the money is counted at the end as for transfers.
#[test]
fn load_purchases_pay_from_balances_and_conserve_money() {
    let dir = tempfile::tempdir().unwrap();
    let args =
        ["load", "--workload", "transfer", "--purchase-ratio", "0.5", "--ops", "2000", "--inflight", "32", "--json"];
    let report = json(&tradeshard(&args, dir.path()));
    let (purchases, transfers) = (report["purchases"].as_u64().unwrap(), report["transfers"].as_u64().unwrap());
    assert!(purchases > 600 && transfers > 600 && purchases + transfers <= 2_000, "{report}");
    assert!(report["purchases_per_sec"].as_f64().is_some_and(|v| v > 0.0), "{report}");
    assert!(report["purchase_latency_us"]["p99"].as_u64().is_some(), "{report}");
    assert_eq!(report["conservation_ok"], true, "{report}");
    assert_eq!((report["in_transit_at_end"].as_i64(), report["errors"].as_u64()), (Some(0), Some(0)));
}

/// With `--retry-ratio`, a fifth of the acknowledged writes are sent again: every retry is
/// answered as the original's repeat (or, for the order number sent with another buyer, a
/// conflict), and every order number kept is found by merchant and order number.
#[test]
fn load_retries_answer_the_originals_and_order_numbers_name_their_trades() {
    let dir = tempfile::tempdir().unwrap();
    let args = ["load", "--ops", "3000", "--inflight", "32", "--users", "100", "--retry-ratio", "0.2", "--json"];
    let report = json(&tradeshard(&args, dir.path()));
    let count = |key: &str| report[key].as_u64().unwrap_or_else(|| panic!("{key} in {report}"));
    assert!(count("retries_sent") > 100, "{report}");
    assert!(count("retry_conflicts") > 10, "{report}");
    assert_eq!(count("retries_sent"), count("retries_answered_as_repeat") + count("retry_conflicts"));
    assert_eq!((count("retry_mismatches"), count("order_mismatches")), (0, 0));
    assert_eq!(count("orders_checked"), report["ops"]["create"]["count"].as_u64().unwrap());
    assert!(report["ops"]["refund"]["count"].as_u64().is_some_and(|n| n > 0), "the mixed workload refunds");
}

/// `--dir` keeps the data; a second run opens it again (from the checkpoint the first run's
/// close left, replaying nothing) and adds to it; `inspect` reports it; a directory holding
/// anything but an engine's data is refused.
#[test]
fn load_keeps_its_data_in_dir_runs_again_on_it_and_inspect_reports_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // Relative to the working directory, as a user types it.
    let data_arg = "data";
    let args = ["load", "--workload", "ingest", "--ops", "500", "--dir", data_arg, "--json"];
    let report = json(&tradeshard(&args, dir.path()));
    assert_eq!(report["ops"]["create"]["count"].as_u64(), Some(500));
    assert!(data.join("MANIFEST").exists());
    let again = json(&tradeshard(&args, dir.path()));
    assert_eq!(again["engine_trades"].as_u64(), Some(1000), "the second run added its trades: {again}");
    assert_eq!(again["replayed_records"].as_u64(), Some(0), "opened from the checkpoint: {again}");
    assert!(again["open_ms"].as_u64().is_some() && again["disk_bytes"].as_u64().is_some_and(|b| b > 0));

    let inspect = json(&tradeshard(&["inspect", "--dir", data_arg, "--json"], dir.path()));
    assert_eq!(inspect["trades"].as_u64(), Some(1000), "{inspect}");
    let shards = inspect["shards"].as_array().unwrap();
    assert!(!shards.is_empty());
    for shard in shards {
        assert!(shard["checkpoint_position"].as_u64().is_some(), "{shard}");
        assert!(shard["segments"].as_u64().is_some_and(|n| n >= 1), "{shard}");
    }

    let other = dir.path().join("other");
    std::fs::create_dir(&other).unwrap();
    std::fs::write(other.join("notes.txt"), b"not an engine").unwrap();
    let refused = tradeshard(&["load", "--ops", "10", "--dir", other.to_str().unwrap()], dir.path());
    assert!(!refused.status.success(), "a directory with other data is refused");
}

#[test]
fn wal_bench_reports_json() {
    let dir = tempfile::tempdir().unwrap();
    let args = ["wal-bench", "--concurrency", "8", "--duration", "300ms", "--preallocation", "reserved", "--json"];
    let report = json(&tradeshard(&args, dir.path()));
    for key in ["records_per_sec", "bytes_per_sec", "fsyncs_per_sec", "records_per_fsync"] {
        assert!(report[key].as_f64().is_some_and(|v| v > 0.0), "{key} in {report}");
    }
    assert!(report["latency_us"]["p999"].as_u64().is_some());
}

#[test]
fn bad_arguments_exit_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let bad: [&[&str]; 15] = [
        &["load", "--inflight", "0"],
        &["load", "--read-ratio", "2"],
        &["load", "--duration", "soon"],
        &["load", "--rate", "0"],
        &["load", "--rate", "NaN"],
        &["load", "--workload", "publish", "--rate", "100"],
        &["load", "--workload", "ingest", "--batch", "4"],
        &["load", "--workload", "transfer", "--batch", "4", "--purchase-ratio", "0.5"],
        &["load", "--workload", "transfer", "--batch", "8193"],
        &["load", "--workload", "publish", "--payload-bytes", "18446744073709551615"],
        &["load", "--workload", "read", "--read-trades", "100000000000"],
        &["load", "--workload", "transfer", "--users", "1000000000000"],
        &["load", "--workload", "read", "--on-executors"],
        &["load", "--workload", "ingest", "--on-executors", "--rate", "1000"],
        &["load", "--workload", "transfer", "--on-executors", "--report-every", "1s"],
    ];
    for args in bad {
        assert!(!tradeshard(args, dir.path()).status.success(), "{args:?}");
    }
}

#[test]
fn load_with_settle_reconciles_runs_again_on_its_directory_and_settle_rereads_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let args = ["load", "--ops", "3000", "--inflight", "16", "--settle", "--dir", data.to_str().unwrap(), "--json"];
    let report = json(&tradeshard(&args, dir.path()));
    assert!(report["events_per_sec"].as_f64().is_some_and(|v| v > 0.0), "{report}");
    assert!(report["end_to_end_p99_us"].as_u64().is_some());
    assert_eq!(report["settlement"]["differences"].as_array().map(Vec::len), Some(0));
    assert_eq!(report["errors"].as_u64(), Some(0), "{report}");
    // A second run on the same directory: its refund numbers are its own, and its consumer
    // reconciles what this run settled, not the totals of both runs.
    let again = json(&tradeshard(&args, dir.path()));
    assert_eq!(again["errors"].as_u64(), Some(0), "{again}");
    assert!(again["settlement"]["events"].as_u64().is_some_and(|events| events > 0), "{again}");
    assert_eq!(again["settlement"]["differences"].as_array().map(Vec::len), Some(0), "{again}");
    let settled =
        json(&tradeshard(&["settle", "--dir", data.to_str().unwrap(), "--group", "audit", "--json"], dir.path()));
    assert!(settled["events"].as_u64().unwrap() > 0);
    assert_eq!(settled["differences"].as_array().map(Vec::len), Some(0));
}

#[test]
fn stress_kills_and_recovers_the_engine_and_reports_what_it_checked() {
    let dir = tempfile::tempdir().unwrap();
    let args = ["stress", "--cycles", "4", "--cycles-per-dir", "2", "--seed", "7", "--json"];
    let summary = json(&tradeshard(&args, dir.path()));
    assert_eq!(summary["cycles"], 4);
    assert_eq!(summary["data_dirs"], 2);
    assert_eq!(summary["seed"], 7);
    assert!(summary["journal_entries"].as_u64().unwrap() > 0, "{summary}");
    assert!(std::fs::read_dir(dir.path()).unwrap().next().is_none(), "the temporary directory is removed");
    let refused = tradeshard(&["stress", "--workers", "0"], dir.path());
    assert!(!refused.status.success());
}

/// `inspect` opens a directory at its own segment size (the stress campaign's are 1 MiB): a
/// free segment of that size is kept and reported, not removed as one of another size.
#[test]
fn inspect_keeps_the_free_segments_of_a_directory_of_another_segment_size() {
    let dir = tempfile::tempdir().unwrap();
    let args = ["stress", "--cycles", "2", "--cycles-per-dir", "2", "--seed", "9", "--dir", "s", "--json"];
    json(&tradeshard(&args, dir.path()));
    assert!(!dir.path().join("s/tradeshard-child").exists(), "the children's copy of the binary is removed");
    let shard = dir.path().join("s/data-000000/shards/0000");
    let free = shard.join("recycled-00000000099999999999.seg");
    std::fs::write(&free, vec![0u8; 1 << 20]).unwrap();
    // Retention may have left free segments of its own, as many as the children got to.
    let free_files = || {
        let names = std::fs::read_dir(&shard).unwrap().map(|entry| entry.unwrap().file_name());
        names.filter(|name| name.to_string_lossy().starts_with("recycled-")).count() as u64
    };
    let before = free_files();
    let report = json(&tradeshard(&["inspect", "--dir", "s/data-000000", "--json"], dir.path()));
    assert!(free.exists(), "the free segment is kept: {report}");
    assert_eq!(free_files(), before, "every free segment is kept: {report}");
    assert_eq!(report["shards"][0]["free_segment_bytes"], before << 20, "{report}");
}

#[test]
fn compare_reports_every_figure_with_its_goal() {
    let dir = tempfile::tempdir().unwrap();
    let args =
        ["compare", "--inflight", "1,8", "--ingest-time", "300ms", "--read-time", "200ms", "--users", "100", "--json"];
    let output = json(&tradeshard(&args, dir.path()));
    let rows = output["rows"].as_array().unwrap();
    let row = |figure: &str| rows.iter().find(|r| r["figure"] == figure).unwrap_or_else(|| panic!("{figure}"));
    assert!(row("ingest trades/s, 8 in flight")["tradeshard"].as_f64().unwrap() > 0.0);
    assert!(row("consumption events/s, after reopen")["tradeshard"].as_f64().unwrap() > 0.0);
    assert_eq!(row("point reads/s, uniform, warm")["goal"], "2x or better");
    assert!(row("bytes on disk per trade, log consumed")["tradeshard"].as_f64().unwrap() > 0.0);
    let run = &output["runs"][0];
    assert_eq!(run["events"], run["trades"], "every trade's event is consumed, hot and after reopening");
    assert!(std::fs::read_dir(dir.path()).unwrap().next().is_none(), "the temporary directory is removed");
}

/// The message workloads report their rates and check that what they stored is delivered:
/// publishes read back once each; half messages committed (by their producer or, for those
/// left to it, by the checker) reach a consumer, with the latency from prepare to delivery.
#[test]
fn load_publishes_and_half_messages_report_their_rates_and_deliver_everything() {
    let dir = tempfile::tempdir().unwrap();
    let common = ["--inflight", "64", "--users", "1000", "--json"];
    let publish =
        json(&tradeshard(&[&["load", "--workload", "publish", "--ops", "3000"], &common[..]].concat(), dir.path()));
    assert!(publish["messages_per_sec"].as_f64().unwrap() > 0.0 && publish["consumed_per_sec"].as_f64().unwrap() > 0.0);
    assert_eq!((publish["messages"].as_u64(), publish["delivered_ok"].as_bool()), (Some(3000), Some(true)));
    let half = json(&tradeshard(
        &[&["load", "--workload", "half-messages", "--ops", "2000"], &common[..]].concat(),
        dir.path(),
    ));
    for key in ["commits_per_sec", "rollbacks_per_sec", "check_backs_per_sec"] {
        assert!(half[key].as_f64().is_some_and(|v| v > 0.0), "{key} in {half}");
    }
    assert_eq!((half["left_to_checker"].as_u64(), half["delivered_ok"].as_bool()), (Some(20), Some(true)));
    assert!(half["messages_per_sec"].is_null() && publish["commits_per_sec"].is_null(), "no figure not measured");
    assert!(half["end_to_end_us"]["p99"].as_u64().is_some());
}

/// `dlq` lists a group's dead letters, replays one (delivered to the group again) and drops
/// the rest.
#[test]
fn dlq_lists_replays_and_drops_a_groups_dead_letters() {
    use tradeshard_engine::{ConsumerConfig, Engine, Options, OutgoingMessage};
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let options = || {
        let mut options = Options { physical_shards: Some(2), executors: Some(1), pin: false, ..Options::new(&data) };
        options.upkeep.messages.retries = 0;
        options
    };
    let engine = Engine::open(options()).unwrap();
    let handle = engine.handle();
    for key in ["a", "b", "c"] {
        handle.publish_blocking(&OutgoingMessage::new("jobs", key, format!("job {key}"))).unwrap();
    }
    let mut consumer = handle.consumer(ConsumerConfig::topics("workers", &["jobs"])).unwrap();
    let mut failed = 0;
    while failed < 3 {
        for message in consumer.poll_messages_blocking(10, std::time::Duration::from_millis(100)).unwrap() {
            consumer.nack_blocking(&message).unwrap();
            failed += 1;
        }
    }
    consumer.commit_blocking().unwrap();
    drop(consumer);
    engine.close().unwrap();
    let data_arg = data.to_str().unwrap();
    let list = || {
        let output = tradeshard(&["dlq", "--dir", data_arg, "--group", "workers", "list", "--json"], dir.path());
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        let lines = String::from_utf8(output.stdout).unwrap();
        lines.lines().map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap()).collect::<Vec<_>>()
    };
    let listed = list();
    assert_eq!(listed.len(), 3);
    assert!(listed.iter().all(|letter| letter["topic"] == "jobs" && letter["attempts"] == 1));
    let first = listed[0]["id"].as_str().unwrap().to_string();
    let replay = tradeshard(&["dlq", "--dir", data_arg, "--group", "workers", "replay", "--id", &first], dir.path());
    assert!(replay.status.success(), "{}", String::from_utf8_lossy(&replay.stderr));
    assert_eq!(list().len(), 2);
    assert!(tradeshard(&["dlq", "--dir", data_arg, "--group", "workers", "drop"], dir.path()).status.success());
    assert!(list().is_empty());
    assert!(!tradeshard(&["dlq", "--dir", data_arg, "--group", "workers", "burn"], dir.path()).status.success());
    let engine = Engine::open(options()).unwrap();
    let mut consumer = engine.handle().consumer(ConsumerConfig::topics("workers", &["jobs"])).unwrap();
    let again = consumer.poll_messages_blocking(10, std::time::Duration::from_secs(2)).unwrap();
    assert_eq!(again.len(), 1, "the replayed letter, to its group");
    assert_eq!((again[0].attempt, again[0].topic.as_str()), (0, "jobs"));
    drop(consumer);
    engine.close().unwrap();
}

/// `THP_enabled` of a running `tradeshard load` (3 s long), as `/proc/<pid>/status` shows it:
/// until it reads `0`, or for its first second and a half.
fn huge_pages_of_a_running_load(keep: Option<&str>) -> Option<String> {
    let dir = tempfile::tempdir().unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_tradeshard"));
    command.args(["load", "--duration", "3s", "--inflight", "8", "--json"]).current_dir(dir.path());
    command.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
    if let Some(keep) = keep {
        command.env("TRADESHARD_HUGE_PAGES", keep);
    }
    let mut child = command.spawn().expect("tradeshard runs");
    let status_path = format!("/proc/{}/status", child.id());
    let started = std::time::Instant::now();
    let mut seen = None;
    // The setting is made at the start of `main`, a moment after the process starts.
    while child.try_wait().unwrap().is_none() && started.elapsed() < std::time::Duration::from_millis(1500) {
        let status = std::fs::read_to_string(&status_path).unwrap_or_default();
        seen = status.lines().find_map(|line| line.strip_prefix("THP_enabled:")).map(|v| v.trim().to_string());
        if seen.as_deref() == Some("0") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().ok();
    child.wait().unwrap();
    seen
}

/// The binary turns transparent huge pages off for itself (`main.rs`, `without_huge_pages`),
/// unless `TRADESHARD_HUGE_PAGES=1` keeps them.
#[test]
fn the_binary_runs_without_transparent_huge_pages_unless_asked() {
    assert_eq!(huge_pages_of_a_running_load(None).as_deref(), Some("0"), "THP_enabled by default");
    assert_eq!(huge_pages_of_a_running_load(Some("0")).as_deref(), Some("0"), "only 1 keeps them");
    // Kept, the setting is the one this test's own process has (a kernel built without huge
    // pages says 0 for every process).
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let own = status.lines().find_map(|line| line.strip_prefix("THP_enabled:")).map(|v| v.trim().to_string());
    assert_eq!(huge_pages_of_a_running_load(Some("1")), own, "kept when asked");
}
