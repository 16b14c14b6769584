//! Injected I/O failures: EIO and ENOSPC at every operation of the write path and of recovery.
//!
//! The rules pinned here: a failed write or fdatasync fails its batch with a typed error
//! (`DiskFull` for ENOSPC), poisons the log so that nothing more is acknowledged even when the
//! disk works again, keeps acknowledged records readable, and loses none of them across a
//! crash; a failure during recovery fails the open and a later open succeeds.

use tradeshard_tests::{run, small_config, zeroed_config};
use tradeshard_wal::disk::{Fault, SimDisk};
use tradeshard_wal::{Error, Wal, WalConfig};

async fn open(disk: &SimDisk) -> (Wal<SimDisk>, Vec<Vec<u8>>) {
    open_with(disk, small_config()).await
}

async fn open_with(disk: &SimDisk, config: WalConfig) -> (Wal<SimDisk>, Vec<Vec<u8>>) {
    let mut replayed = Vec::new();
    let (wal, _) = Wal::open(disk.clone(), config, |_, r| replayed.push(r.to_vec())).await.unwrap();
    (wal, replayed)
}

#[test]
fn failed_fdatasync_acknowledges_nothing_more() {
    run(async {
        let disk = SimDisk::new();
        let (wal, _) = open(&disk).await;
        wal.append(b"first").await.unwrap();
        // The next flush is one write then one fdatasync: fail the fdatasync.
        disk.fail_op(disk.ops() + 2, Fault::Eio);
        let failed = wal.append(b"second").await.unwrap_err();
        assert!(matches!(failed, Error::Io { op: "fdatasync", .. }), "got {failed:?}");
        for _ in 0..3 {
            assert!(
                matches!(wal.append(b"later").await, Err(Error::Poisoned { .. })),
                "the disk works again, the log must not"
            );
        }
        assert!(matches!(wal.enqueue(b"later"), Err(Error::Poisoned { .. })));
        assert_eq!(wal.read(0).await.unwrap(), b"first", "acknowledged records stay readable");
        assert_eq!(wal.durable_end(), 1);
        assert!(matches!(wal.close().await, Err(Error::Poisoned { .. })));

        disk.crash(1);
        let (wal, replayed) = open(&disk).await;
        assert_eq!(replayed[0], b"first");
        assert!(replayed.len() <= 2 && replayed.iter().all(|r| r != b"later"));
        wal.close().await.unwrap();
    });
}

#[test]
fn full_disk_is_a_clear_error_and_loses_nothing_acknowledged() {
    run(async {
        let disk = SimDisk::new();
        let (wal, _) = open(&disk).await;
        wal.append(b"kept").await.unwrap();
        disk.fail_op(disk.ops() + 1, Fault::Enospc);
        let failed = wal.append(b"no room").await.unwrap_err();
        assert!(matches!(failed, Error::DiskFull { .. }), "got {failed:?}");
        assert!(!failed.is_retryable());
        assert_eq!(wal.read(0).await.unwrap(), b"kept");
        drop(wal);

        disk.crash(2);
        let (wal, replayed) = open(&disk).await;
        assert_eq!(replayed, vec![b"kept".to_vec()]);
        assert_eq!(wal.append(b"after reopen").await.unwrap().seq, 1, "writes work again after reopening");
        wal.close().await.unwrap();
    });
}

/// Appends 40 records of 3 KiB (rolling a 64 KiB segment every ~18) with operation `n` of
/// the write path failing; returns how many were acknowledged, after checking the rules.
async fn append_with_fault_at(n: u64, fault: Fault, config: &WalConfig) -> Option<usize> {
    let disk = SimDisk::new();
    let (wal, _) = open_with(&disk, config.clone()).await;
    disk.fail_op(disk.ops() + n, fault);
    let mut acked = Vec::new();
    let mut first_error = None;
    for i in 0..40u32 {
        let record = vec![i as u8; 3000];
        match wal.append(&record).await {
            Ok(ack) => {
                assert!(first_error.is_none(), "op {n} {fault:?}: record {i} acknowledged after a failure");
                acked.push((ack.seq, record));
            }
            Err(error) => match (&first_error, &error) {
                (None, Error::DiskFull { .. }) => {
                    assert_eq!(fault, Fault::Enospc);
                    first_error = Some(error);
                }
                (None, Error::Io { .. }) => {
                    assert_eq!(fault, Fault::Eio);
                    first_error = Some(error);
                }
                (Some(_), Error::Poisoned { .. }) => {}
                _ => panic!("op {n} {fault:?}: unexpected error {error:?} after {first_error:?}"),
            },
        }
    }
    drop(wal);
    disk.crash(n);
    let (wal, replayed) = open(&disk).await;
    for (seq, record) in &acked {
        assert_eq!(replayed.get(*seq as usize), Some(record), "op {n} {fault:?}: acknowledged seq {seq} lost");
    }
    wal.close().await.unwrap();
    first_error.map(|_| acked.len())
}

#[test]
fn every_write_path_operation_failing_is_a_typed_error_and_loses_nothing() {
    run(async {
        for fault in [Fault::Eio, Fault::Enospc] {
            let mut n = 1;
            while append_with_fault_at(n, fault, &small_config()).await.is_some() {
                n += 1;
            }
            // 40 flushes of a write and an fdatasync, plus the segment creations.
            assert!(n > 80, "{fault:?}: the sweep stopped hitting the write path after {n} operations");
        }
    });
}

#[test]
fn faults_while_preparing_segments_ahead_are_typed_errors_and_lose_nothing() {
    run(async {
        for fault in [Fault::Eio, Fault::Enospc] {
            let mut hit = 0;
            for n in 1..=150 {
                hit += append_with_fault_at(n, fault, &zeroed_config()).await.is_some() as u32;
            }
            assert!(hit > 80, "{fault:?}: only {hit} of 150 faults reached an append");
        }
    });
}

/// A log of three segments whose last one ends in a torn frame.
async fn log_with_torn_tail() -> SimDisk {
    let disk = SimDisk::new();
    let (wal, _) = open(&disk).await;
    for i in 0..45u32 {
        wal.append(&vec![i as u8; 3000]).await.unwrap();
    }
    wal.close().await.unwrap();
    let last = disk.list_names().into_iter().max().unwrap();
    let end = disk.file_len(&last).unwrap();
    disk.overwrite(&last, end, &[0xAB; 1000]);
    disk
}

#[test]
fn a_failure_during_recovery_fails_the_open_and_a_retry_recovers() {
    run(async {
        let mut failed_opens = 0;
        for n in 1.. {
            let disk = log_with_torn_tail().await;
            disk.fail_op(disk.ops() + n, Fault::Eio);
            match Wal::open(disk.clone(), small_config(), |_, _| {}).await {
                Ok((wal, _)) => {
                    wal.close().await.unwrap();
                    break;
                }
                Err(Error::Io { .. }) => failed_opens += 1,
                Err(other) => panic!("op {n} of recovery failing gave {other:?}, not an I/O error"),
            }
            let (wal, replayed) = open(&disk).await;
            assert_eq!(replayed.len(), 45, "op {n}: the retry recovers every record");
            wal.close().await.unwrap();
        }
        assert!(failed_opens >= 8, "recovery has at least list/open/stat/read/truncate/sync calls: {failed_opens}");
    });
}

/// An open that removed a segment whose creation was torn and died before its directory's
/// sync (the removal done, not durable), then an open retried without a power loss: the retry
/// finds the directory as the first left it and must make it durable before it acknowledges
/// anything, or a power loss brings the removed segment back, and the log ends before what the
/// retry acknowledged.
#[test]
fn records_acknowledged_after_a_retried_open_survive_a_power_loss() {
    run(async {
        for seed in 0..16 {
            let disk = SimDisk::new();
            let (wal, _) = open(&disk).await;
            for i in 0..20u8 {
                wal.append(&[i; 3000]).await.unwrap();
            }
            wal.close().await.unwrap();
            let torn = tradeshard_wal::testing::file_name(20);
            disk.put_file(&torn, &[0; 4096]);
            // What the first open did before it died.
            tradeshard_wal::disk::Disk::remove(&disk, &torn).await.unwrap();
            let (wal, _) = open(&disk).await;
            let acked = wal.append(b"acknowledged after the retry").await.unwrap().seq;
            drop(wal);
            disk.crash(seed);
            let mut found = Vec::new();
            let (wal, _) = Wal::open(disk.clone(), small_config(), |seq, _| found.push(seq)).await.unwrap();
            assert!(found.contains(&acked), "seed {seed}: record {acked} lost: {found:?}");
            wal.close().await.unwrap();
        }
    });
}
