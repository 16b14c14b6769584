//! Opening and closing an engine many times in one process: each close gives back every file
//! descriptor it took (segment files, directories, rings), so that a process that
//! reopens its engine (a service that restarts its storage, the stress tool's checker) does
//! not run out of them; and creating a data directory is safe to interrupt.

use tradeshard_engine::Engine;
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
