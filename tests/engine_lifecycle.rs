//! Opening and closing an engine many times in one process: each close gives back every file
//! descriptor it took (segment files, directories, rings), so that a process that
//! reopens its engine (a service that restarts its storage, the stress tool's checker) does
//! not run out of them.

use tradeshard_engine::Engine;
use tradeshard_tests::{engine_options, new_trade};

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
