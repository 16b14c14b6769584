//! Opening a data directory that cannot be opened: each case is a clear typed error naming
//! the path at fault, and leaves every file of the directory as it was (names, modes, bytes).
//!
//! Cases: locked by another process; a manifest of a newer format version; a truncated
//! manifest; a segment with a flipped bit in the middle; a directory and a segment the opening
//! user may not read (as root, the check runs in a child process under uid 65534, skipped with
//! a message where that is not possible). New data directories are created with mode 0700.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use tradeshard_engine::{ConsumerConfig, Engine, Error, Options, Refusal, StartPosition, Upkeep, FORMAT_VERSION};
use tradeshard_tests::{engine_options, new_trade};

const NOBODY: u32 = 65534;

/// Every file and directory under `dir`: mode and, for files, the bytes' hash.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (u32, Option<u64>)> {
    let mut entries = BTreeMap::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(path) = pending.pop() {
        let meta = std::fs::symlink_metadata(&path).unwrap();
        let hash = if meta.is_dir() {
            pending.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
            None
        } else {
            Some(xxhash_rust::xxh3::xxh3_64(&std::fs::read(&path).unwrap()))
        };
        entries.insert(path.strip_prefix(dir).unwrap().to_path_buf(), (meta.mode(), hash));
    }
    entries
}

fn options(dir: &Path) -> Options {
    Options { segment_bytes: 1 << 20, ..engine_options(dir, 1, 1) }
}

/// Options whose close takes no checkpoint, so that the next open reads the whole log as it
/// does after a crash before the first checkpoint.
fn no_checkpoint(options: Options) -> Options {
    Options { upkeep: Upkeep { checkpoint_on_close: false, ..options.upkeep }, ..options }
}

/// A closed data directory of `trades` trades with no checkpoint.
fn populated_without_checkpoint(dir: &Path, trades: u64) {
    let engine = Engine::open(no_checkpoint(options(dir))).unwrap();
    let handle = engine.handle();
    for n in 0..trades {
        handle.create_trade_blocking(new_trade(1 + n % 10, n, 100)).unwrap();
    }
    engine.close().unwrap();
}

/// A closed data directory holding `trades` trades written one at a time (a flush each).
fn populated(dir: &Path, trades: u64) {
    let engine = Engine::open(options(dir)).unwrap();
    let handle = engine.handle();
    for n in 0..trades {
        handle.create_trade_blocking(new_trade(1 + n % 10, n, 100)).unwrap();
    }
    engine.close().unwrap();
}

/// Opens `dir` expecting a failure; checks it left the directory as it was.
fn open_fails(dir: &Path, opts: Options) -> Error {
    let before = snapshot(dir);
    let error = match Engine::open(opts) {
        Ok(_) => panic!("{} opened", dir.display()),
        Err(error) => error,
    };
    assert_eq!(snapshot(dir), before, "a refused open changed {}: {error}", dir.display());
    error
}

/// The `engine_child` binary of this package (`bin/engine_child.rs`) in `mode` on `dir`.
fn child(mode: &str, dir: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_engine_child"));
    command.arg(mode).arg(dir);
    command
}

#[test]
fn a_directory_locked_by_another_process_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    populated(dir.path(), 3);
    let mut holder = child("hold", dir.path()).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    let mut lines = BufReader::new(holder.stdout.take().unwrap()).lines();
    assert!(lines.any(|line| line.unwrap().contains("READY")), "the holder opened the engine");
    // The holder is writing to the directory, so no snapshot here: the lock is taken before
    // anything but the manifest is read.
    match Engine::open(options(dir.path())) {
        Err(Error::Locked { path }) => assert_eq!(path, dir.path()),
        Err(other) => panic!("expected Locked, got {other:?}"),
        Ok(_) => panic!("opened a directory another process holds"),
    }
    drop(holder.stdin.take());
    assert!(holder.wait().unwrap().success());
    Engine::open(options(dir.path())).unwrap().close().unwrap();
}

fn rewrite_manifest(dir: &Path, edit: impl FnOnce(&str) -> String) {
    let path = dir.join("MANIFEST");
    let text = std::fs::read_to_string(&path).unwrap();
    let json = edit(text.lines().next().unwrap());
    let checksum = xxhash_rust::xxh3::xxh3_64(json.as_bytes());
    std::fs::write(&path, format!("{json}\n{checksum:016x}\n")).unwrap();
}

#[test]
fn a_newer_format_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    populated(dir.path(), 3);
    let (current, newer) = (FORMAT_VERSION, FORMAT_VERSION + 1);
    rewrite_manifest(dir.path(), |json| {
        json.replace(&format!("\"format_version\":{current}"), &format!("\"format_version\":{newer}"))
    });
    match open_fails(dir.path(), options(dir.path())) {
        Error::UnsupportedVersion { path, found, supported } => {
            assert_eq!((found, supported), (newer, current));
            assert_eq!(path, dir.path().join("MANIFEST"));
        }
        other => panic!("expected UnsupportedVersion, got {other:?}"),
    }
}

/// Directories of the earlier formats (1: frames without pieces; 2: refunds without request
/// numbers, order numbers unique only per shard; 3: no checkpoints, segment headers without
/// their creation time; 4: checkpoints holding every trade, no table of trades) are refused by
/// their manifest, before any of their segments is read.
#[test]
fn an_older_format_version_is_refused() {
    for older in 1..FORMAT_VERSION {
        let dir = tempfile::tempdir().unwrap();
        populated(dir.path(), 3);
        rewrite_manifest(dir.path(), |json| {
            json.replace(&format!("\"format_version\":{FORMAT_VERSION}"), &format!("\"format_version\":{older}"))
        });
        match open_fails(dir.path(), options(dir.path())) {
            Error::UnsupportedVersion { found, supported, .. } => {
                assert_eq!((found, supported), (older, FORMAT_VERSION))
            }
            other => panic!("expected UnsupportedVersion, got {other:?}"),
        }
    }
}

#[test]
fn a_truncated_or_missing_manifest_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    populated(dir.path(), 3);
    let manifest = dir.path().join("MANIFEST");
    let bytes = std::fs::read(&manifest).unwrap();
    for cut in [0, 1, bytes.len() / 2, bytes.len() - 2, bytes.len() - 1] {
        std::fs::write(&manifest, &bytes[..cut]).unwrap();
        match open_fails(dir.path(), options(dir.path())) {
            Error::BadManifest { path, .. } => assert_eq!(path, manifest),
            other => panic!("cut at {cut}: expected BadManifest, got {other:?}"),
        }
    }
    // A directory that holds files but no manifest is not taken over as a new one.
    std::fs::remove_file(&manifest).unwrap();
    assert!(matches!(open_fails(dir.path(), options(dir.path())), Error::BadManifest { .. }));
    // Nor is it given a lock file when it never was one.
    let foreign = tempfile::tempdir().unwrap();
    std::fs::write(foreign.path().join("notes.txt"), b"not trades").unwrap();
    assert!(matches!(open_fails(foreign.path(), options(foreign.path())), Error::BadManifest { .. }));
}

#[test]
fn a_segment_with_a_flipped_bit_in_the_middle_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    // Each create is its own flush of at least one block: 400 fill more than one 1 MiB segment.
    populated_without_checkpoint(dir.path(), 400);
    let shard_dir = dir.path().join("shards/0000");
    let mut segments: Vec<_> = std::fs::read_dir(&shard_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    segments.sort();
    assert!(segments.len() >= 2, "the first segment is sealed: {segments:?}");
    let mut bytes = std::fs::read(&segments[0]).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x10;
    std::fs::write(&segments[0], &bytes).unwrap();
    match open_fails(dir.path(), options(dir.path())) {
        Error::Corrupt { path, .. } => assert_eq!(path, segments[0]),
        other => panic!("expected a corrupt segment, got {other:?}"),
    }
}

/// Below a checkpoint an open does not read the log (that is what bounds its time); the
/// damage is found, and named, by the first reader of that segment.
#[test]
fn a_damaged_segment_below_the_checkpoint_is_refused_to_its_reader() {
    let dir = tempfile::tempdir().unwrap();
    populated(dir.path(), 400);
    let shard_dir = dir.path().join("shards/0000");
    let segments = segments_of(&shard_dir);
    assert!(segments.len() >= 2, "the first segment is sealed: {segments:?}");
    let mut bytes = std::fs::read(&segments[0]).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x10;
    std::fs::write(&segments[0], &bytes).unwrap();
    let engine = Engine::open(options(dir.path())).unwrap();
    let handle = engine.handle();
    assert_eq!(
        handle.stats_blocking().unwrap().shards[0].opened.replayed_records,
        0,
        "a clean close left a checkpoint"
    );
    let config = ConsumerConfig { start: StartPosition::Earliest, ..ConsumerConfig::new("audit") };
    let mut consumer = handle.consumer(config).unwrap();
    let error = (0..100).find_map(|_| consumer.poll_blocking(1000, std::time::Duration::from_millis(10)).err());
    match error {
        Some(Error::Corrupt { path, .. }) => assert_eq!(path, segments[0]),
        other => panic!("expected the damaged segment, got {other:?}"),
    }
    drop(consumer);
    engine.close().unwrap();
}

/// A read-only open (`Options::read_only`, as `tradeshard inspect` opens) of a directory whose
/// log holds records past its checkpoint: reads and polls answer, a write is refused with
/// `Refusal::ReadOnly` and leaves no trace, and the close takes no checkpoint though its
/// options ask for one, so the next open replays as much again; no file changes.
#[test]
fn a_read_only_open_answers_reads_refuses_writes_and_changes_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(no_checkpoint(options(dir.path()))).unwrap();
    let handle = engine.handle();
    let ids: Vec<_> =
        (1..=40u64).map(|n| handle.create_trade_blocking(new_trade(1 + n % 7, n, 100)).unwrap().id).collect();
    engine.close().unwrap();
    // What an open repairs or prepares is in place before the picture is taken.
    Engine::open(no_checkpoint(options(dir.path()))).unwrap().close().unwrap();
    let before = snapshot(dir.path());
    let mut replayed = Vec::new();
    for _ in 0..2 {
        let engine = Engine::open(Options { read_only: true, ..options(dir.path()) }).unwrap();
        let handle = engine.handle();
        replayed.push(handle.stats_blocking().unwrap().shards[0].opened.replayed_records);
        assert_eq!(handle.get_blocking(ids[7]).unwrap().id, ids[7]);
        let config = ConsumerConfig { start: StartPosition::Earliest, ..ConsumerConfig::new("audit") };
        let mut consumer = handle.consumer(config).unwrap();
        let polled = consumer.poll_blocking(1000, std::time::Duration::from_millis(200)).unwrap();
        assert!(!polled.is_empty(), "the log's events are read");
        drop(consumer);
        match handle.create_trade_blocking(new_trade(3, 1_000, 100)) {
            Err(Error::Refused(Refusal::ReadOnly)) => {}
            other => panic!("a write is refused as read-only, got {other:?}"),
        }
        assert_eq!(handle.stats_blocking().unwrap().trades, 40, "no trace of the refused write");
        match handle.checkpoint_blocking() {
            Err(Error::Refused(Refusal::ReadOnly)) => {}
            other => panic!("a checkpoint asked for is refused as read-only, got {other:?}"),
        }
        engine.close().unwrap();
        assert_eq!(snapshot(dir.path()), before, "a read-only open and close change no file");
    }
    assert!(replayed[0] >= 40 && replayed[1] == replayed[0], "each open replays the same records: {replayed:?}");
}

/// Runs an open of `dir` as uid 65534 in a child process; `None` (with a message) where this
/// test cannot switch users.
fn open_as_nobody(dir: &Path) -> Option<String> {
    if std::fs::metadata("/proc/self").unwrap().uid() != 0 {
        eprintln!("skipped: switching to an unprivileged user needs root");
        return None;
    }
    let output = match child("try-open", dir).uid(NOBODY).gid(NOBODY).stderr(Stdio::null()).output() {
        Ok(output) => output,
        Err(e) => {
            eprintln!("skipped: the child binary cannot run as uid {NOBODY}: {e}");
            return None;
        }
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    match stdout.lines().find_map(|line| line.split_once("OUTCOME ").map(|(_, o)| o.to_string())) {
        Some(outcome) => Some(outcome),
        None => {
            eprintln!("skipped: the child binary did not run as uid {NOBODY} (status {:?})", output.status);
            None
        }
    }
}

#[test]
fn files_the_user_may_not_read_are_refused_with_their_path() {
    let parent = tempfile::tempdir().unwrap();
    std::fs::set_permissions(parent.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let dir = parent.path().join("data");
    populated(&dir, 3);
    // The directory is 0700 and the child's user does not own it.
    let before = snapshot(&dir);
    let Some(outcome) = open_as_nobody(&dir) else { return };
    assert!(outcome.contains(&dir.join("MANIFEST").display().to_string()), "{outcome}");
    assert!(outcome.contains("ermission denied"), "{outcome}");
    assert_eq!(snapshot(&dir), before);

    // The user owns the directory, not one segment.
    let chown = |path: &Path, uid: u32| std::os::unix::fs::chown(path, Some(uid), Some(uid)).unwrap();
    for entry in snapshot(&dir).keys() {
        chown(&dir.join(entry), NOBODY);
    }
    let segment = dir.join("shards/0000/00000000000000000000.log");
    chown(&segment, 0);
    std::fs::set_permissions(&segment, std::fs::Permissions::from_mode(0o600)).unwrap();
    let before = snapshot(&dir);
    let outcome = open_as_nobody(&dir).expect("ran once already");
    assert!(outcome.contains(&segment.display().to_string()), "{outcome}");
    assert!(outcome.contains("ermission denied"), "{outcome}");
    assert_eq!(snapshot(&dir), before);
}

#[test]
fn new_data_directories_are_private() {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("a/b/data");
    Engine::open(options(&dir)).unwrap().close().unwrap();
    assert_eq!(std::fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
    assert_eq!(std::fs::metadata(dir.join("shards/0000")).unwrap().mode() & 0o777, 0o700);
}

/// The segments of one shard's log, oldest first.
fn segments_of(shard_dir: &Path) -> Vec<PathBuf> {
    let mut segments: Vec<_> = std::fs::read_dir(shard_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    segments.sort();
    segments
}

/// An engine of four shards on two executors, one shard corrupt: the others, which a
/// successful open would repair (a torn tail cut, a leftover segment preparation removed), are
/// left as they were too, since no shard starts before every shard recovered. Once the corrupt
/// bit is put back, the open succeeds and makes those repairs.
#[test]
fn a_refused_open_changes_none_of_the_other_shards() {
    let dir = tempfile::tempdir().unwrap();
    let opts = || no_checkpoint(Options { segment_bytes: 1 << 20, ..engine_options(dir.path(), 4, 2) });
    let engine = Engine::open(opts()).unwrap();
    let handle = engine.handle();
    // One flush of at least a block per create: more than a 1 MiB segment per shard.
    for n in 0..1600u64 {
        handle.create_trade_blocking(new_trade(1 + n % 97, n, 100)).unwrap();
    }
    engine.close().unwrap();
    // Shard 0: a torn write beyond its last frame. Shard 1: a preparation left half made.
    let torn = segments_of(&dir.path().join("shards/0000")).pop().unwrap();
    let mut bytes = std::fs::read(&torn).unwrap();
    let len = bytes.len();
    bytes[len - 4096..].fill(0xAB);
    std::fs::write(&torn, &bytes).unwrap();
    std::fs::write(dir.path().join("shards/0001/next-segment.prep"), vec![0u8; 8192]).unwrap();
    // Shard 3: a flipped bit in the middle of a sealed segment.
    let sealed = segments_of(&dir.path().join("shards/0003"));
    assert!(sealed.len() >= 2, "shard 3's first segment is sealed: {sealed:?}");
    let mut corrupt = std::fs::read(&sealed[0]).unwrap();
    let middle = corrupt.len() / 2;
    corrupt[middle] ^= 0x10;
    std::fs::write(&sealed[0], &corrupt).unwrap();

    match open_fails(dir.path(), opts()) {
        Error::Corrupt { path, .. } => assert_eq!(path, sealed[0]),
        other => panic!("expected shard 3's corrupt segment, got {other:?}"),
    }

    corrupt[middle] ^= 0x10;
    std::fs::write(&sealed[0], &corrupt).unwrap();
    let engine = Engine::open(opts()).unwrap();
    assert_eq!(engine.handle().stats_blocking().unwrap().trades, 1600);
    engine.close().unwrap();
    let repaired = std::fs::read(&torn).unwrap();
    assert!(repaired[len - 4096..].iter().all(|b| *b == 0), "the torn tail was cut");
    let prep = std::fs::read(dir.path().join("shards/0001/next-segment.prep"));
    assert!(prep.map_or(true, |bytes| bytes.len() != 8192), "the half-made preparation was made anew");
}

#[test]
fn options_out_of_bounds_are_refused_before_anything_is_made() {
    use std::time::Duration;
    type Change = fn(Options) -> Options;
    let changes: [(&str, Change); 4] = [
        ("preempt_interval 0", |o: Options| Options { preempt_interval: Duration::ZERO, ..o }),
        ("preempt_interval 2 s", |o: Options| Options { preempt_interval: Duration::from_secs(2), ..o }),
        ("no checkpoint interval", |o: Options| Options {
            upkeep: Upkeep { checkpoint_interval: Duration::ZERO, ..o.upkeep },
            ..o
        }),
        ("no memory for recent work", |o: Options| Options {
            upkeep: Upkeep { checkpoint_memory_bytes: 0, ..o.upkeep },
            ..o
        }),
    ];
    for (what, change) in changes {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        match Engine::open(change(options(&data))) {
            Err(Error::InvalidOptions(reason)) => assert!(!reason.is_empty(), "{what}"),
            Err(other) => panic!("{what}: {other}"),
            Ok(_) => panic!("{what}: opened"),
        }
        assert!(!data.exists(), "{what}: the refused open made the directory");
    }
}

#[test]
fn an_executor_that_cannot_be_made_refuses_the_open_and_changes_nothing() {
    // More memory for I/O buffers than any machine maps: glommio cannot make the executor on
    // the thread the engine started for it (it panics there, and the panic's message shows in
    // the test's output).
    let dir = tempfile::tempdir().unwrap();
    populated(dir.path(), 20);
    let error = open_fails(dir.path(), Options { io_memory_bytes: 1 << 50, ..options(dir.path()) });
    match error {
        Error::Executor { executor: 0, source } => {
            assert!(source.to_string().starts_with("glommio could not make the executor"), "{source}")
        }
        other => panic!("expected the executor's error, got {other:?}"),
    }
    // Nothing held: the same directory opens with workable options.
    let engine = Engine::open(options(dir.path())).unwrap();
    assert_eq!(engine.handle().stats_blocking().unwrap().shards.iter().map(|s| s.trades).sum::<u64>(), 20);
    engine.close().unwrap();
}
