//! Damaged logs: what recovery cuts (a torn tail) and what it refuses (everything else).
//!
//! Refusals must name the segment and offset, and must leave every byte as it was.

use tradeshard_tests::{run, small_config};
use tradeshard_wal::disk::{Disk, SimDisk, SplitMix64};
use tradeshard_wal::testing::{file_name, SegmentHeader};
use tradeshard_wal::{Error, Wal, WalConfig, BLOCK_BYTES};

/// A log with `records` incompressible records of 3000 bytes, each in a frame of its own
/// (one block), so that every damaged offset below falls inside a frame: record `i` of the
/// first segment is the frame at block `i + 1`, and a 64 KiB segment holds 15 of them.
async fn log_of(records: u32) -> SimDisk {
    let disk = SimDisk::new();
    let (wal, _) = Wal::open(disk.clone(), small_config(), |_, _| {}).await.unwrap();
    let mut rng = SplitMix64::new(records as u64);
    for _ in 0..records {
        let record: Vec<u8> = (0..3000).map(|_| rng.next_u64() as u8).collect();
        wal.append(&record).await.unwrap();
    }
    wal.close().await.unwrap();
    disk
}

async fn reopen(disk: &SimDisk) -> Result<(Wal<SimDisk>, Vec<Vec<u8>>, tradeshard_wal::RecoveryReport), Error> {
    let mut replayed = Vec::new();
    let (wal, report) = Wal::open(disk.clone(), small_config(), |_, r| replayed.push(r.to_vec())).await?;
    Ok((wal, replayed, report))
}

fn snapshot(disk: &SimDisk) -> Vec<(String, Vec<u8>)> {
    disk.list_names().into_iter().map(|name| (name.clone(), disk.read_file(&name).unwrap())).collect()
}

/// Opening must fail with corruption at `offset` of `name`, and change nothing.
async fn assert_refused(disk: &SimDisk, name: &str, offset: u64) {
    let before = snapshot(disk);
    match reopen(disk).await {
        Err(Error::Corruption { path, offset: at, .. }) => {
            assert!(path.ends_with(name), "corruption names {path:?}, expected {name}");
            assert_eq!(at, offset, "corruption offset");
        }
        Err(other) => panic!("expected corruption, got {other:?}"),
        Ok(_) => panic!("a corrupt log opened"),
    }
    assert!(snapshot(disk) == before, "a refused open changed the directory");
}

#[test]
fn a_torn_tail_is_truncated_and_the_log_continues() {
    run(async {
        let disk = log_of(10).await;
        let name = file_name(0);
        let end = BLOCK_BYTES * 11;
        // The first 1000 bytes of a copy of the last frame: a valid header, a cut payload.
        let last_frame = disk.read_file(&name).unwrap()[(end - BLOCK_BYTES) as usize..][..1000].to_vec();
        disk.overwrite(&name, end, &last_frame);
        let (wal, replayed, report) = reopen(&disk).await.unwrap();
        assert_eq!(replayed.len(), 10);
        assert_eq!(report.truncated.as_ref().map(|(_, at)| *at), Some(end));
        let after_cut = disk.read_file(&name).unwrap();
        assert!(after_cut[end as usize..].iter().all(|&b| b == 0), "the torn bytes are gone");
        assert_eq!(wal.append(b"next").await.unwrap().seq, 10);
        wal.close().await.unwrap();
        let (_, replayed, report) = reopen(&disk).await.unwrap();
        assert_eq!((replayed.len(), report.truncated), (11, None));
    });
}

#[test]
fn a_flipped_bit_in_the_middle_is_refused_not_truncated() {
    run(async {
        let disk = log_of(10).await;
        let name = file_name(0);
        let third_frame = BLOCK_BYTES * 3;
        disk.flip_bit(&name, third_frame + 100, 3);
        assert_refused(&disk, &name, third_frame).await;
    });
}

#[test]
fn a_flipped_bit_in_a_sealed_segment_is_refused() {
    run(async {
        let disk = log_of(45).await;
        let names = disk.list_names();
        assert!(names.len() >= 3, "45 records of 3000 bytes span three 64 KiB segments");
        let last_frame = disk.file_len(&names[0]).unwrap() - BLOCK_BYTES;
        disk.flip_bit(&names[0], last_frame + 2000, 0);
        assert_refused(&disk, &names[0], last_frame).await;
    });
}

#[test]
fn a_flipped_bit_in_a_segment_header_is_refused() {
    run(async {
        let disk = log_of(45).await;
        let names = disk.list_names();
        disk.flip_bit(&names[1], 17, 1);
        assert_refused(&disk, &names[1], 0).await;
    });
}

#[test]
fn damage_to_the_last_flush_reads_as_a_torn_tail() {
    // Inherent to any log: damage to the newest flush looks exactly like a write torn by a
    // crash, so it is cut (docs/FORMAT.md, "Torn tail or corruption").
    run(async {
        let disk = log_of(10).await;
        let name = file_name(0);
        let last_frame = BLOCK_BYTES * 10;
        disk.flip_bit(&name, last_frame + 500, 5);
        let (_, replayed, report) = reopen(&disk).await.unwrap();
        assert_eq!(replayed.len(), 9);
        assert_eq!(report.truncated.map(|(_, at)| at), Some(last_frame));
    });
}

#[test]
fn a_missing_middle_segment_is_refused() {
    run(async {
        let disk = log_of(45).await;
        let names = disk.list_names();
        disk.remove(&names[1]).await.unwrap();
        disk.sync_dir().await.unwrap();
        assert_refused(&disk, &names[2], 0).await;
    });
}

#[test]
fn a_segment_of_a_newer_version_is_refused() {
    run(async {
        let disk = log_of(3).await;
        let name = file_name(0);
        let mut header =
            SegmentHeader { shard_id: small_config().shard_id, base_seq: 0, chain_seed: 0, created_ms: 0 }.encode();
        header[8] = 3;
        let checksum = xxhash_rust::xxh3::xxh3_64(&header[..56]);
        header[56..].copy_from_slice(&checksum.to_le_bytes());
        disk.overwrite(&name, 0, &header);
        let before = snapshot(&disk);
        let error = reopen(&disk).await.err().expect("a newer version must not open");
        assert!(matches!(error, Error::UnsupportedVersion { found: 3, supported: 2, .. }), "got {error:?}");
        assert!(snapshot(&disk) == before);
    });
}

#[test]
fn a_segment_of_another_shard_is_refused() {
    run(async {
        let disk = log_of(3).await;
        let config = WalConfig { shard_id: 8, ..small_config() };
        let error = Wal::open(disk.clone(), config, |_, _| {}).await.err().expect("foreign segment");
        assert!(matches!(error, Error::ForeignSegment { found: 7, expected: 8, .. }), "got {error:?}");
    });
}

#[test]
fn a_segment_torn_while_being_created_is_removed() {
    run(async {
        let disk = log_of(5).await;
        let torn = file_name(5);
        let file = disk.create(&torn).await.unwrap();
        drop(file);
        disk.overwrite(&torn, 0, &[0x5A; 700]);
        let (wal, replayed, report) = reopen(&disk).await.unwrap();
        assert_eq!(replayed.len(), 5);
        assert!(report.removed_segment.is_some_and(|p| p.ends_with(&torn)));
        assert!(!disk.list_names().contains(&torn));
        assert_eq!(wal.append(b"continues").await.unwrap().seq, 5);
        wal.close().await.unwrap();
    });
}

/// A replay starting at the torn segment's base skips the segment before it; once the torn one
/// is removed that segment is the tail, and the log must go on from its true end and last
/// frame: a later open that reads every segment accepts the chain, and every record is kept.
#[test]
fn a_segment_torn_while_being_created_after_a_skipped_one_leaves_a_sound_chain() {
    run(async {
        let disk = log_of(5).await;
        let torn = file_name(5);
        disk.put_file(&torn, &[0; 4096]);
        let (recovered, report) = Wal::recover_from(disk.clone(), small_config(), 5, |_, _| {}).await.unwrap();
        assert!(report.removed_segment.is_some_and(|p| p.ends_with(&torn)));
        let wal = recovered.start().await.unwrap();
        assert_eq!(wal.append(b"after the torn segment").await.unwrap().seq, 5);
        wal.close().await.unwrap();
        let (wal, replayed, _) = reopen(&disk).await.expect("the whole log opens");
        assert_eq!(replayed.len(), 6);
        assert_eq!(replayed[5], b"after the torn segment");
        wal.close().await.unwrap();
    });
}

#[test]
fn a_zeroed_block_before_durable_frames_is_refused() {
    run(async {
        let disk = log_of(10).await;
        let name = file_name(0);
        disk.overwrite(&name, BLOCK_BYTES * 4, &[0u8; BLOCK_BYTES as usize]);
        assert_refused(&disk, &name, BLOCK_BYTES * 4).await;
    });
}

#[test]
fn a_reader_reports_corruption_found_after_open() {
    run(async {
        let disk = log_of(10).await;
        let (wal, _, _) = reopen(&disk).await.unwrap();
        let name = file_name(0);
        disk.flip_bit(&name, BLOCK_BYTES * 2 + 300, 6);
        assert_eq!(wal.read(0).await.unwrap().len(), 3000, "undamaged frames still read");
        match wal.read(1).await {
            Err(Error::Corruption { path, offset, .. }) => {
                assert!(path.ends_with(&name));
                assert_eq!(offset, BLOCK_BYTES * 2);
            }
            other => panic!("expected corruption, got {other:?}"),
        }
        let mut reader = wal.reader(0).unwrap();
        assert!(reader.next().await.unwrap().is_some());
        assert!(matches!(reader.next().await, Err(Error::Corruption { .. })));
    });
}

/// Frames of the scanned segment below the position an owner replays from (a checkpoint holds
/// their effect) are checked by their checksum alone, not decoded: damage to one is refused
/// all the same, and on a sound log only the records from that position are replayed, while a
/// reader still reads the ones below it.
#[test]
fn a_frame_below_the_replay_is_still_checked() {
    run(async {
        let disk = log_of(10).await;
        let (recovered, _) = Wal::recover_from(disk.clone(), small_config(), 8, |_, _| {}).await.unwrap();
        let wal = recovered.start().await.unwrap();
        let mut reader = wal.reader(2).unwrap();
        let (seq, record) = reader.next().await.unwrap().expect("record 2");
        assert_eq!((seq, record.len()), (2, 3000));
        drop(reader);
        wal.close().await.unwrap();

        let mut replayed = Vec::new();
        let outcome =
            Wal::recover_from(disk.clone(), small_config(), 8, |at, record| replayed.push((at.seq, record.len())))
                .await;
        assert!(outcome.is_ok());
        assert_eq!(replayed, [(8, 3000), (9, 3000)]);

        let name = file_name(0);
        let third_frame = BLOCK_BYTES * 3;
        disk.flip_bit(&name, third_frame + 100, 3);
        match Wal::recover_from(disk.clone(), small_config(), 8, |_, _| {}).await {
            Err(Error::Corruption { path, offset, .. }) => {
                assert!(path.ends_with(&name), "{path:?}");
                assert_eq!(offset, third_frame);
            }
            Err(other) => panic!("expected corruption, got {other:?}"),
            Ok(_) => panic!("a damaged frame below the replay went unreported"),
        }
    });
}

/// An owner's checkpoint names a frame at or before its last record (`Wal::frame_pos`), and a
/// recovery from it reads the segment from that frame on: damage before the frame goes unseen
/// (it is below the checkpoint), exactly the records from the position are replayed, the log
/// goes on, and a reader still reads the records before the frame. A position that names no
/// frame of the segment, or one numbered otherwise, is passed over for the full scan.
#[test]
fn a_recovery_from_a_checkpoints_frame_reads_nothing_before_it() {
    run(async {
        let disk = SimDisk::new();
        let (wal, _) = Wal::open(disk.clone(), small_config(), |_, _| {}).await.unwrap();
        let mut rng = SplitMix64::new(12);
        let records: Vec<Vec<u8>> =
            (0..12).map(|_| (0..3000).map(|_| rng.next_u64() as u8).collect::<Vec<u8>>()).collect();
        for record in &records {
            wal.append(record).await.unwrap();
        }
        assert_eq!(wal.frame_pos(0), None, "the segment's first frame is no position to keep");
        assert_eq!(wal.frame_pos(12), None, "not in the log");
        let at = wal.frame_pos(9).expect("an indexed frame before record 9");
        assert!(at.segment_base == 0 && at.first_seq <= 9 && at.first_seq > 0, "{at:?}");
        // Each record is a frame of one block, at block `seq + 1`.
        assert_eq!(at.offset, (at.first_seq + 1) * BLOCK_BYTES);
        wal.close().await.unwrap();

        let replay_from = |from: (u64, Option<tradeshard_wal::FramePos>)| {
            let disk = disk.clone();
            async move {
                let mut replayed = Vec::new();
                let outcome = Wal::recover_from_frame(disk, small_config(), from, |at, record| {
                    replayed.push((at.seq, record.to_vec()))
                })
                .await;
                outcome.map(|(recovered, report)| (recovered, report, replayed))
            }
        };
        let expected: Vec<_> = (10..12).map(|seq| (seq, records[seq as usize].clone())).collect();
        let moved = |offset, first_seq| tradeshard_wal::FramePos { offset, first_seq, ..at };
        // Off a frame's start, on a frame numbered otherwise, past the position, in another
        // segment: a full scan, the same records.
        for wrong in [
            moved(at.offset + BLOCK_BYTES, at.first_seq),
            moved(at.offset, at.first_seq + 1),
            moved(12 * BLOCK_BYTES, 11),
        ] {
            let (_, report, replayed) = replay_from((10, Some(wrong))).await.unwrap();
            assert_eq!((report.unread_bytes, &replayed), (0, &expected), "{wrong:?}");
        }
        let elsewhere = tradeshard_wal::FramePos { segment_base: 1, ..at };
        assert_eq!(replay_from((10, Some(elsewhere))).await.unwrap().1.unread_bytes, 0);

        // A bit flipped in a frame before the named one: unseen from it, refused by a full scan.
        let name = file_name(0);
        disk.flip_bit(&name, 2 * BLOCK_BYTES + 100, 3);
        assert!(
            matches!(replay_from((10, None)).await, Err(Error::Corruption { offset, .. }) if offset == 2 * BLOCK_BYTES)
        );
        let (recovered, report, replayed) = replay_from((10, Some(at))).await.unwrap();
        assert_eq!(replayed, expected);
        assert_eq!(report.unread_bytes, at.offset - BLOCK_BYTES);
        assert_eq!(report.next_seq, 12);
        let wal = recovered.start().await.unwrap();
        assert_eq!(wal.append(b"after the open").await.unwrap().seq, 12);
        let mut reader = wal.reader(at.first_seq + 1).unwrap();
        let (seq, record) = reader.next().await.unwrap().expect("a record after the named frame");
        assert_eq!((seq, record), (at.first_seq + 1, &records[at.first_seq as usize + 1][..]));
        drop(reader);
        wal.close().await.unwrap();
        // The frames from the named one on, and the new one, still chain: a later open from the
        // same frame reads them all.
        let (_, report, replayed) = replay_from((10, Some(at))).await.unwrap();
        assert_eq!((report.next_seq, replayed.len()), (13, 3));
    });
}

/// Records sent together share a frame, so a position to replay from can fall inside one (that
/// frame is decoded and its records from the position on replayed) or on a frame's start (the
/// frames before it are checked by their checksum alone): from any position, exactly the
/// records from it are replayed, in order, as they were written.
#[test]
fn a_replay_from_any_position_hands_over_exactly_the_records_from_it() {
    run(async {
        let disk = SimDisk::new();
        let (wal, _) = Wal::open(disk.clone(), small_config(), |_, _| {}).await.unwrap();
        let records: Vec<Vec<u8>> = (0..40u32).map(|n| format!("record {n}").into_bytes()).collect();
        for batch in records.chunks(8) {
            let tickets: Vec<_> = batch.iter().map(|record| wal.enqueue(record).unwrap()).collect();
            for ticket in tickets {
                ticket.await.unwrap();
            }
        }
        wal.close().await.unwrap();
        for from in [0u64, 3, 8, 11, 16, 23, 39, 40] {
            let mut replayed = Vec::new();
            Wal::recover_from(disk.clone(), small_config(), from, |at, record| {
                replayed.push((at.seq, record.to_vec()))
            })
            .await
            .unwrap();
            let expected: Vec<_> = (from..40).map(|seq| (seq, records[seq as usize].clone())).collect();
            assert_eq!(replayed, expected, "from {from}");
        }
    });
}
