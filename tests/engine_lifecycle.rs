//! Opening and closing an engine many times in one process: each close gives back every file
//! descriptor it took (segment files, directories, rings), so that a process that
//! reopens its engine (a service that restarts its storage, the stress tool's checker) does
//! not run out of them; and creating a data directory is safe to interrupt.

use std::time::Duration;

use tradeshard_engine::{Engine, Options, SyncMethod};
use tradeshard_tests::{engine_options, new_trade};

/// The tests of this file run one at a time: descriptors are counted per process.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Open descriptors of this process: (eventfds, all others).
fn open_fds() -> (usize, usize) {
    let targets: Vec<_> = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|fd| std::fs::read_link(fd.unwrap().path()).ok())
        .collect();
    let eventfds = targets.iter().filter(|t| t.to_string_lossy().contains("eventfd")).count();
    (eventfds, targets.len() - eventfds)
}

#[test]
fn closing_an_engine_releases_every_file_descriptor() {
    let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let mut counts = Vec::new();
    for round in 0..12u64 {
        let engine = Engine::open(engine_options(dir.path(), 4, 2)).unwrap();
        engine.handle().create_trade_blocking(new_trade(1 + round, round, 10)).unwrap();
        engine.close().unwrap();
        counts.push(open_fds());
    }
    // The first rounds may warm up process-wide state; after that files, directories and
    // rings must not pile up. glommio 0.9 keeps one eventfd per executor it ran (glommio issue
    // 448): at most the two executors' worth per round, none of ours.
    assert_eq!(counts[3].1, counts[11].1, "(eventfds, other descriptors) after each round: {counts:?}");
    assert!(counts[11].0 - counts[3].0 <= 2 * 8, "(eventfds, other descriptors) after each round: {counts:?}");
}

/// Found by the kill campaign: a process killed while creating a data directory, after the
/// lock file and the temporary manifest were written and before the rename, left a directory
/// the next open refused as "not a data directory".
#[test]
fn a_creation_interrupted_before_the_manifest_is_created_again() {
    let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let parent = tempfile::tempdir().unwrap();
    for leftovers in [&["LOCK"][..], &["LOCK", "MANIFEST.tmp"], &["MANIFEST.tmp"]] {
        let dir = parent.path().join(leftovers.join("+"));
        std::fs::create_dir(&dir).unwrap();
        for name in leftovers {
            std::fs::write(dir.join(name), b"{\"format_ver").unwrap();
        }
        let engine = Engine::open(engine_options(&dir, 2, 1)).unwrap();
        engine.handle().create_trade_blocking(new_trade(1, 1, 10)).unwrap();
        engine.close().unwrap();
        assert!(!dir.join("MANIFEST.tmp").exists(), "{leftovers:?}");
        let engine = Engine::open(engine_options(&dir, 2, 1)).unwrap();
        assert_eq!(engine.handle().stats_blocking().unwrap().trades, 1);
        engine.close().unwrap();
    }
}

/// Under `Durability::Buffered` the close's checkpoint waits for the log's synced end. On
/// O_DSYNC files (the engine's default) no interval's fdatasync is owed, and the synced end
/// did not move: every close waited forever. Each sync method closes, and a reopen finds every
/// trade acknowledged.
#[test]
fn an_engine_with_buffered_durability_closes_and_keeps_its_trades() {
    let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    for method in [SyncMethod::DsyncWrites, SyncMethod::Fdatasync] {
        let dir = tempfile::tempdir().unwrap();
        let options =
            Options { sync_method: method, ..engine_options(dir.path(), 2, 2) }.buffered(Duration::from_millis(5));
        let (done, finished) = std::sync::mpsc::channel();
        let reopen = options.clone();
        std::thread::spawn(move || {
            let engine = Engine::open(options).unwrap();
            let ids: Vec<_> = (1..=50u64)
                .map(|buyer| engine.handle().create_trade_blocking(new_trade(buyer, buyer, 10)).unwrap().id)
                .collect();
            engine.close().unwrap();
            done.send(ids).unwrap();
        });
        let ids =
            finished.recv_timeout(Duration::from_secs(60)).unwrap_or_else(|_| panic!("{method:?}: no close in 60 s"));
        let engine = Engine::open(reopen).unwrap();
        for id in ids {
            assert_eq!(engine.handle().get_blocking(id).unwrap().id, id, "{method:?}");
        }
        engine.close().unwrap();
    }
}
