//! Round trips through the log, each run on the simulated disk and on real directories with
//! glommio direct I/O (writes then fdatasyncs, and O_DSYNC writes): append and read back, roll segments, reopen and continue numbering,
//! limits and backpressure, and visibility only after acknowledgement; reads from the device in
//! `wal_roundtrip/reads.rs`.

use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::Duration;

use tradeshard_tests::{random_record, run, small_config, zeroed_config};
use tradeshard_wal::disk::{Disk, DmaDisk, SimDisk, SplitMix64};
use tradeshard_wal::{Durability, Error, SyncMethod, Wal, WalConfig};

/// Runs `scenario` once on a simulated disk and on temporary real directories, once with each
/// sync method.
fn on_both_disks<F, Fut>(scenario: F)
where
    F: Fn(Box<dyn FnOnce() -> DiskChoice>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    run(scenario(Box::new(|| DiskChoice::Sim(SimDisk::new()))));
    for method in [SyncMethod::Fdatasync, SyncMethod::DsyncWrites] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        run(scenario(Box::new(move || DiskChoice::Real(DmaDisk::new(&path).unwrap().with_sync_method(method)))));
    }
}

enum DiskChoice {
    Sim(SimDisk),
    Real(DmaDisk),
}

macro_rules! with_disk {
    ($choice:expr, |$disk:ident| $body:expr) => {
        match $choice {
            DiskChoice::Sim($disk) => $body,
            DiskChoice::Real($disk) => $body,
        }
    };
}

async fn open<D: Disk>(disk: &D, config: WalConfig) -> (Wal<D>, Vec<(u64, Vec<u8>)>) {
    let mut replayed = Vec::new();
    let (wal, _) = Wal::open(disk.clone(), config, |seq, record| replayed.push((seq, record.to_vec()))).await.unwrap();
    (wal, replayed)
}

/// Enqueues every record without waiting for each, awaiting the oldest ticket whenever the
/// queue pushes back.
async fn append_all<D: Disk>(wal: &Wal<D>, records: &[Vec<u8>]) -> Vec<tradeshard_wal::Appended> {
    let mut tickets = std::collections::VecDeque::new();
    let mut acks = Vec::new();
    for record in records {
        loop {
            match wal.enqueue(record) {
                Ok(ticket) => break tickets.push_back(ticket),
                Err(Error::Backpressure { .. }) => acks.push(tickets.pop_front().unwrap().await.unwrap()),
                Err(other) => panic!("enqueue failed: {other}"),
            }
        }
    }
    for ticket in tickets {
        acks.push(ticket.await.unwrap());
    }
    acks
}

async fn appended_records_read_back_in_order<D: Disk>(disk: D, config: WalConfig) {
    let (wal, replayed) = open(&disk, config).await;
    assert!(replayed.is_empty());
    let mut rng = SplitMix64::new(1);
    let records: Vec<Vec<u8>> = (0..300).map(|_| random_record(&mut rng, 4096)).collect();
    let mut acks = Vec::new();
    for chunk in records.chunks(37) {
        acks.extend(append_all(&wal, chunk).await);
    }
    for (i, ack) in acks.iter().enumerate() {
        assert_eq!(ack.seq, i as u64);
        assert_eq!(wal.read(ack.seq).await.unwrap(), records[i], "read of seq {i}");
        assert_eq!(wal.read_at(ack.seq, ack.piece).await.unwrap(), records[i], "read_at of seq {i}");
    }
    reads_back_from_the_start(&wal, &records).await;
    let (segments, _) = wal.index_footprint();
    assert!(segments > 3, "300 records of up to 4 KiB roll 64 KiB segments, got {segments}");
    assert!(matches!(wal.read(300).await, Err(Error::OutOfRange { seq: 300, .. })));
    wal.close().await.unwrap();
}

/// A reader from the first record returns `records`, in order, and nothing more.
async fn reads_back_from_the_start<D: Disk>(wal: &Wal<D>, records: &[Vec<u8>]) {
    let mut reader = wal.reader(0).unwrap();
    let mut seen = 0;
    while let Some((seq, record)) = reader.next().await.unwrap() {
        assert_eq!((seq, record), (seen, records[seen as usize].as_slice()));
        seen += 1;
    }
    assert_eq!(seen, records.len() as u64);
}

#[test]
fn appended_records_read_back_in_order_and_roll_segments() {
    let config = small_config();
    on_both_disks(|choice| {
        let config = config.clone();
        async move { with_disk!(choice(), |disk| appended_records_read_back_in_order(disk, config).await) }
    });
}

#[test]
fn segments_prepared_ahead_read_back_in_order() {
    let config = zeroed_config();
    on_both_disks(|choice| {
        let config = config.clone();
        async move { with_disk!(choice(), |disk| appended_records_read_back_in_order(disk, config).await) }
    });
}

async fn reopen_continues_numbering<D: Disk>(disk: D) {
    let mut rng = SplitMix64::new(2);
    let first: Vec<Vec<u8>> = (0..50).map(|_| random_record(&mut rng, 2000)).collect();
    let second: Vec<Vec<u8>> = (0..50).map(|_| random_record(&mut rng, 2000)).collect();
    let (wal, _) = open(&disk, small_config()).await;
    append_all(&wal, &first).await;
    wal.close().await.unwrap();

    let (wal, replayed) = open(&disk, small_config()).await;
    assert_eq!(replayed.len(), 50);
    assert!(replayed.iter().enumerate().all(|(i, (seq, r))| *seq == i as u64 && *r == first[i]));
    assert_eq!(wal.next_seq(), 50);
    let acks = append_all(&wal, &second).await;
    assert_eq!(acks[0].seq, 50);
    drop(wal); // without close: nothing acknowledged may depend on it

    let (wal, replayed) = open(&disk, small_config()).await;
    let all: Vec<Vec<u8>> = first.iter().chain(&second).cloned().collect();
    assert_eq!(replayed.into_iter().map(|(_, r)| r).collect::<Vec<_>>(), all);
    wal.close().await.unwrap();
}

/// A log reopened with a segment size below its tail's end (the operator lowered it) goes on:
/// the tail counts as full, the next record goes to a new segment, and everything reads back.
async fn reopen_with_smaller_segments_goes_on<D: Disk>(disk: D) {
    let mut rng = SplitMix64::new(3);
    let records: Vec<Vec<u8>> = (0..20).map(|_| random_record(&mut rng, 1500)).collect();
    // One flush each, a block each: the tail ends past 40 KiB of its 64 KiB.
    let (wal, _) = open(&disk, small_config()).await;
    for record in &records[..10] {
        wal.append(record).await.unwrap();
    }
    assert_eq!(wal.stats().segments_created, 1);
    wal.close().await.unwrap();
    let smaller = WalConfig { segment_bytes: 32 << 10, ..small_config() };
    let (wal, replayed) = open(&disk, smaller.clone()).await;
    assert_eq!(replayed.len(), 10);
    for record in &records[10..] {
        wal.append(record).await.unwrap();
    }
    wal.close().await.unwrap();
    let (wal, replayed) = open(&disk, smaller).await;
    assert_eq!(replayed.iter().map(|(_, r)| r.clone()).collect::<Vec<_>>(), records);
    wal.close().await.unwrap();
}

#[test]
fn a_log_reopened_with_smaller_segments_goes_on() {
    on_both_disks(
        |choice| async move { with_disk!(choice(), |disk| reopen_with_smaller_segments_goes_on(disk).await) },
    );
}

#[test]
fn reopen_replays_everything_and_continues_numbering() {
    on_both_disks(|choice| async move { with_disk!(choice(), |disk| reopen_continues_numbering(disk).await) });
}

async fn oversized_record_is_refused<D: Disk>(disk: D) {
    let (wal, _) = open(&disk, small_config()).await;
    let too_big = vec![0u8; 4097];
    assert!(matches!(wal.append(&too_big).await, Err(Error::RecordTooLarge { len: 4097, max: 4096 })));
    assert!(matches!(wal.enqueue(&too_big), Err(Error::RecordTooLarge { .. })));
    assert_eq!(wal.next_seq(), 0, "a refused record takes no sequence number");
    assert_eq!(wal.append(b"fits").await.unwrap().seq, 0);
    wal.close().await.unwrap();
}

#[test]
fn oversized_record_is_refused_without_trace() {
    on_both_disks(|choice| async move { with_disk!(choice(), |disk| oversized_record_is_refused(disk).await) });
}

async fn queue_full_is_backpressure<D: Disk>(disk: D) {
    let config = small_config();
    let (wal, _) = open(&disk, config.clone()).await;
    let mut tickets = Vec::new();
    let refused = loop {
        match wal.enqueue(&[1u8; 1000]) {
            Ok(ticket) => tickets.push(ticket),
            Err(error) => break error,
        }
    };
    assert!(matches!(refused, Error::Backpressure { .. }), "got {refused:?}");
    assert!(refused.is_retryable());
    assert!(tickets.len() * 1004 <= config.pending_bytes_max && tickets.len() * 1004 + 1004 > config.pending_bytes_max);
    // `append` waits for room instead, and resolves once the queue drains.
    let waited = wal.append(&[2u8; 1000]).await.unwrap();
    assert_eq!(waited.seq, tickets.len() as u64);
    for ticket in tickets {
        ticket.await.unwrap();
    }
    wal.close().await.unwrap();
}

#[test]
fn full_queue_is_backpressure_or_a_wait() {
    on_both_disks(|choice| async move { with_disk!(choice(), |disk| queue_full_is_backpressure(disk).await) });
}

async fn nothing_visible_before_acknowledged<D: Disk>(disk: D) {
    let (wal, _) = open(&disk, small_config()).await;
    let mut reader = wal.reader(0).unwrap();
    let ticket = wal.enqueue(b"pending").unwrap();
    assert_eq!(wal.durable_end(), 0);
    assert!(reader.next().await.unwrap().is_none(), "a queued record is not readable");
    assert!(matches!(wal.read(0).await, Err(Error::OutOfRange { .. })));
    let ack = ticket.await.unwrap();
    assert_eq!(wal.durable_end(), 1);
    assert_eq!(reader.next().await.unwrap(), Some((ack.seq, &b"pending"[..])));
    wal.close().await.unwrap();
}

#[test]
fn nothing_is_visible_before_it_is_acknowledged() {
    on_both_disks(|choice| async move { with_disk!(choice(), |disk| nothing_visible_before_acknowledged(disk).await) });
}

async fn concurrent_appenders_share_flushes<D: Disk>(disk: D) {
    let (wal, _) = open(&disk, small_config()).await;
    let wal = Rc::new(wal);
    let appenders: Vec<_> = (0..256u32)
        .map(|i| {
            let wal = wal.clone();
            glommio::spawn_local(async move { wal.append(&i.to_le_bytes()).await.unwrap().seq })
        })
        .collect();
    let mut seqs = Vec::new();
    for appender in appenders {
        seqs.push(appender.await);
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (0..256).collect::<Vec<u64>>(), "every appender got a distinct sequence number");
    let stats = wal.stats();
    assert_eq!(stats.records, 256);
    assert!(stats.flushes * 8 <= stats.records, "256 concurrent appenders took {} flushes", stats.flushes);
    assert!(stats.fsyncs <= stats.flushes + stats.segments_created);
    // The histograms count every flush once: by its records, and (each durable in the flush
    // itself) by its time to durable.
    assert_eq!(stats.flush_records.iter().sum::<u64>(), stats.flushes);
    assert_eq!(stats.durable_flush_micros.iter().sum::<u64>(), stats.flushes);
    let fullest = stats.flush_records.iter().rposition(|&n| n > 0).unwrap();
    assert!(fullest >= 4, "a flush of at least 8 records lies in bucket 4 or above, not {fullest}");
    Rc::try_unwrap(wal).ok().unwrap().close().await.unwrap();
}

#[test]
fn concurrent_appenders_share_one_flush() {
    on_both_disks(|choice| async move { with_disk!(choice(), |disk| concurrent_appenders_share_flushes(disk).await) });
}

/// Under `Durability::Buffered`, records written by O_DSYNC writes are synced when the write
/// completes, with no interval's fdatasync to wait for: a checkpoint waits for the synced end,
/// and an engine on O_DSYNC files once waited for it forever. Written by plain writes, they are
/// synced only by the interval's fdatasync (an hour here, so not during the test).
async fn buffered_synced_end_follows_the_sync_method<D: Disk>(disk: D) {
    let buffered = Durability::Buffered { sync_interval: Duration::from_secs(3600) };
    let (wal, _) = open(&disk, WalConfig { durability: buffered, ..small_config() }).await;
    let records: Vec<Vec<u8>> = (0..300u32).map(|i| i.to_le_bytes().repeat(40)).collect();
    let acks = append_all(&wal, &records).await;
    assert_eq!(wal.durable_end(), 300, "every record acknowledged: {}", acks.len());
    let expected = match disk.sync_method() {
        SyncMethod::DsyncWrites => 300,
        SyncMethod::Fdatasync => 0,
    };
    assert_eq!(wal.synced_end(), expected, "synced end with {:?}", disk.sync_method());
    wal.close().await.unwrap();
}

#[test]
fn buffered_records_written_o_dsync_are_synced_at_once() {
    run(buffered_synced_end_follows_the_sync_method(SimDisk::new()));
    run(buffered_synced_end_follows_the_sync_method(SimDisk::with_dsync_writes()));
    for method in [SyncMethod::Fdatasync, SyncMethod::DsyncWrites] {
        let dir = tempfile::tempdir().unwrap();
        let disk = DmaDisk::new(dir.path().join("log")).unwrap().with_sync_method(method);
        run(buffered_synced_end_follows_the_sync_method(disk));
    }
}

/// With `SyncMethod::DsyncWrites` the segment files are really opened `O_DSYNC` (the kernel's
/// own account of the descriptor says so) and no flush pays an fdatasync: only the segment
/// preparation syncs.
#[test]
fn dsync_writes_open_segments_o_dsync_and_skip_fdatasync() {
    const O_DSYNC: u32 = 0o10000;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log");
    run(async move {
        let disk = DmaDisk::new(&path).unwrap().with_sync_method(SyncMethod::DsyncWrites);
        let file = disk.create("probe").await.unwrap();
        let fdinfo = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", file.as_raw_fd())).unwrap();
        let flags = fdinfo.lines().find_map(|l| l.strip_prefix("flags:")).unwrap().trim();
        let flags = u32::from_str_radix(flags, 8).unwrap();
        assert_eq!(flags & O_DSYNC, O_DSYNC, "flags {flags:o} of a file of a dsync disk");
        drop(file);
        disk.remove("probe").await.unwrap();

        let (wal, _) = open(&disk, small_config()).await;
        let before = wal.stats();
        for i in 0..50u32 {
            wal.append(&i.to_le_bytes()).await.unwrap();
        }
        let stats = wal.stats();
        assert_eq!(stats.durable_writes - before.durable_writes, stats.flushes - before.flushes);
        assert!(stats.flushes - before.flushes >= 50, "one append at a time: one flush each");
        let roll_syncs = 2 * (stats.segments_created - before.segments_created);
        assert!(
            stats.fsyncs - before.fsyncs <= roll_syncs,
            "{} fdatasyncs for {} new segments",
            stats.fsyncs - before.fsyncs,
            stats.segments_created - before.segments_created
        );
        wal.close().await.unwrap();
    });
}

/// Segments zero-filled ahead of need are filled without O_DSYNC (one sync at the end) and
/// opened again for appends: every descriptor of a segment the log appends to is O_DSYNC.
#[test]
fn prepared_segments_are_appended_to_through_o_dsync_descriptors() {
    const O_DSYNC: u32 = 0o10000;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log");
    let log_dir = path.clone();
    run(async move {
        let disk = DmaDisk::new(&path).unwrap().with_sync_method(SyncMethod::DsyncWrites);
        let (wal, _) = open(&disk, zeroed_config()).await;
        // 64 KiB segments: a few hundred records of 1 KiB roll onto prepared ones.
        for i in 0..300u32 {
            wal.append(&vec![i as u8; 1024]).await.unwrap();
        }
        assert!(wal.stats().segments_created >= 2);
        let mut segment_fds = 0;
        for fd in std::fs::read_dir("/proc/self/fd").unwrap() {
            let fd = fd.unwrap();
            let Ok(target) = std::fs::read_link(fd.path()) else { continue };
            if target.parent() != Some(log_dir.as_path()) || target.extension().is_none_or(|e| e != "log") {
                continue;
            }
            let fdinfo = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.file_name().to_str().unwrap()));
            let Ok(fdinfo) = fdinfo else { continue };
            let flags = fdinfo.lines().find_map(|l| l.strip_prefix("flags:")).unwrap().trim();
            let flags = u32::from_str_radix(flags, 8).unwrap();
            assert_eq!(flags & O_DSYNC, O_DSYNC, "{} open without O_DSYNC", target.display());
            segment_fds += 1;
        }
        assert!(segment_fds >= 2, "the log's segments are open: {segment_fds}");
        wal.close().await.unwrap();
    });
}

/// A log reopened with room left in its tail segment prepares no segment until it is written
/// to: an opener that only reads does not write a segment's worth of zeros. Once appended to,
/// it prepares the next.
#[test]
fn a_reopened_log_prepares_its_next_segment_only_when_written() {
    run(async {
        let disk = SimDisk::new();
        let config = WalConfig { segment_bytes: 1 << 20, ..zeroed_config() };
        let (wal, _) = open(&disk, config.clone()).await;
        let mut rng = SplitMix64::new(9);
        let records: Vec<Vec<u8>> = (0..20).map(|_| random_record(&mut rng, 500)).collect();
        append_all(&wal, &records).await;
        wal.close().await.unwrap();
        let prepared = tradeshard_wal::testing::PREPARED_NAME;
        let _ = disk.remove(prepared).await;

        let (wal, replayed) = open(&disk, config.clone()).await;
        assert_eq!(replayed.len(), 20);
        assert_eq!(wal.read(3).await.unwrap(), records[3]);
        wal.close().await.unwrap();
        assert!(!disk.list_names().iter().any(|n| n == prepared), "a read-only open prepared a segment");

        let (wal, _) = open(&disk, config).await;
        append_all(&wal, &records[..1]).await;
        wal.close().await.unwrap();
        assert!(disk.list_names().iter().any(|n| n == prepared), "the first append prepares the next segment");
    });
}

/// The log counts what compression did: records that repeat themselves are stored in compressed
/// pieces, random ones raw, and the payload bytes before and after add up to each.
#[test]
fn stats_count_the_pieces_compression_paid_on() {
    run(async {
        let disk = SimDisk::new();
        let (wal, _) = open(&disk, small_config()).await;
        // Four records of 4,000 repeated bytes: compressed pieces.
        append_all(&wal, &vec![vec![b'r'; 4000]; 4]).await;
        let after_repeated = wal.stats();
        assert!(after_repeated.pieces >= 1, "{after_repeated:?}");
        assert_eq!(after_repeated.pieces_compressed, after_repeated.pieces, "every piece of repeated bytes pays");
        assert_eq!(after_repeated.payload_raw_bytes, 4 * (4 + 4000), "records with their length prefixes");
        assert!(after_repeated.payload_stored_bytes < after_repeated.payload_raw_bytes / 8);
        // Random records: stored raw, a piece's header more than their bytes.
        let mut rng = SplitMix64::new(5);
        for _ in 0..3 {
            let record: Vec<u8> = (0..3000).map(|_| rng.next_u64() as u8).collect();
            wal.append(&record).await.unwrap();
        }
        let stats = wal.stats();
        assert_eq!(stats.pieces_compressed, after_repeated.pieces_compressed, "random bytes are stored raw");
        assert_eq!(stats.pieces, after_repeated.pieces + 3, "one flush, one piece, each: {stats:?}");
        let raw_added = stats.payload_raw_bytes - after_repeated.payload_raw_bytes;
        let stored_added = stats.payload_stored_bytes - after_repeated.payload_stored_bytes;
        assert!(stored_added > raw_added, "raw pieces add their headers: {raw_added} raw, {stored_added} stored");
        wal.close().await.unwrap();
    });
}

mod reads;
