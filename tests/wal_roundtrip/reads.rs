//! Reading the log back from the device: point reads through a piece's position, readers
//! served from the recent frames in memory or indexing as they scan, and a recovery that reads
//! each chunk once.

use super::*;

/// Sixteen records of 1 KiB of random bytes, which do not compress.
fn incompressible_records(seed: u64) -> Vec<Vec<u8>> {
    let mut rng = SplitMix64::new(seed);
    (0..16).map(|_| (0..1024).map(|_| rng.next_u64() as u8).collect()).collect()
}

/// A point read through the position an append returned reads the blocks of the record's
/// piece, with one read, not its whole frame.
#[test]
fn a_point_read_reads_one_piece_of_a_long_frame_with_one_read() {
    run(async {
        let disk = SimDisk::new();
        let (wal, _) = open(&disk, small_config()).await;
        // Sixteen 1 KiB records make frames of up to four blocks (16 KiB payloads), cut into
        // pieces of at most four records (4 KiB).
        let records = incompressible_records(5);
        let acks = append_all(&wal, &records).await;
        let mut pieces: Vec<_> = acks.iter().map(|ack| ack.piece).collect();
        pieces.dedup();
        assert!((5..=8).contains(&pieces.len()), "16 records in {} pieces", pieces.len());
        assert!(acks.windows(2).any(|w| w[0].piece == w[1].piece), "a piece holds several records");
        let (_, len) = acks[12].piece.blocks();
        assert!(len <= 2 * 4096, "a piece of 4 KiB is read as at most two blocks, not {len} bytes");
        let before = disk.ops();
        assert_eq!(wal.read_at(acks[12].seq, acks[12].piece).await.unwrap(), records[12]);
        assert_eq!(disk.ops() - before, 1, "one read");
        for (ack, record) in acks.iter().zip(&records) {
            assert_eq!(&wal.read_at(ack.seq, ack.piece).await.unwrap(), record);
        }
        wal.close().await.unwrap();
    });
}

/// A point read given a position that does not hold the record is refused as corruption,
/// never answered with another record.
#[test]
fn a_point_read_through_the_wrong_piece_is_refused() {
    run(async {
        let disk = SimDisk::new();
        let (wal, _) = open(&disk, small_config()).await;
        let records = incompressible_records(6);
        let acks = append_all(&wal, &records).await;
        let error = wal.read_at(acks[0].seq, acks[12].piece).await.unwrap_err();
        assert!(matches!(error, Error::Corruption { .. }), "{error}");
        wal.close().await.unwrap();
    });
}

/// With recent frames kept in memory, readers that keep up with the writer and point reads of
/// what was just written read no device, and what they read is what the device holds: a
/// reader from the start crosses from the device into memory without a seam.
#[test]
fn recent_frames_serve_readers_that_keep_up_and_agree_with_the_device() {
    run(async {
        let disk = SimDisk::new();
        let config = WalConfig { recent_frames_bytes: 32 << 10, ..small_config() };
        let (wal, _) = open(&disk, config).await;
        let mut rng = SplitMix64::new(9);
        let records: Vec<Vec<u8>> = (0..400).map(|_| random_record(&mut rng, 2048)).collect();
        let mut acks = Vec::new();
        let mut tail = wal.reader(0).unwrap();
        for chunk in records.chunks(20) {
            acks.extend(append_all(&wal, chunk).await);
            // A tailing reader takes each new chunk from memory.
            let before = disk.ops();
            let first = acks.len() - chunk.len();
            for (expected, sent) in records.iter().enumerate().skip(first).take(chunk.len()) {
                let (seq, record) = tail.next().await.unwrap().expect("acknowledged");
                assert_eq!((seq, record), (expected as u64, sent.as_slice()));
            }
            assert_eq!(disk.ops(), before, "a reader that keeps up reads no device");
            let last = acks.last().unwrap();
            assert!(wal.read_at(last.seq, last.piece).await.unwrap() == records[acks.len() - 1]);
            assert_eq!(disk.ops(), before, "a point read of the latest record reads no device");
        }
        assert!(wal.stats().recent_frame_bytes <= 32 << 10);
        assert!(wal.stats().memory_reads > 0);
        assert_eq!((wal.stats().device_frames_read, wal.stats().point_device_reads), (0, 0));
        // From the start: the oldest records from the device, the latest from memory.
        let before = disk.ops();
        reads_back_from_the_start(&wal, &records).await;
        assert!(disk.ops() > before, "the oldest records are no longer in memory");
        assert!(wal.stats().device_frames_read > 0, "counted as frames read from the device");
        for (ack, record) in acks.iter().zip(&records) {
            assert_eq!(&wal.read_at(ack.seq, ack.piece).await.unwrap(), record);
        }
        assert!(wal.stats().point_device_reads > 0, "the oldest records' point reads went to the device");
        wal.close().await.unwrap();
    });
}

/// Reads record `deep` twice, each time with a new reader: the first indexes what it scans,
/// and the second starts near the record, reading less of the device.
async fn second_reader_starts_near(wal: &Wal<SimDisk>, disk: &SimDisk, records: &[Vec<u8>], deep: u64) {
    let (_, unindexed) = wal.index_footprint();
    let read_deep = || {
        let mut reader = wal.reader(deep).unwrap();
        async move { reader.next().await.unwrap().map(|(seq, record)| (seq, record.to_vec())) }
    };
    let before = disk.ops();
    assert_eq!(read_deep().await, Some((deep, records[deep as usize].clone())));
    let first_read_ops = disk.ops() - before;
    let (_, indexed) = wal.index_footprint();
    assert!(indexed > unindexed, "the reader indexed what it scanned: {unindexed} -> {indexed}");
    let before = disk.ops();
    assert_eq!(read_deep().await, Some((deep, records[deep as usize].clone())));
    let second_read_ops = disk.ops() - before;
    assert!(
        second_read_ops < first_read_ops,
        "the second reader starts near the record: {second_read_ops} reads against {first_read_ops}"
    );
}

/// An open that started at the frame a checkpoint named did not read the part of that segment
/// before it: the first reader of a record there scans from the segment's first frame and
/// indexes what it passes, so that the next reader starts near the record.
#[test]
fn readers_index_the_part_of_a_segment_before_a_checkpoints_frame() {
    run(async {
        let disk = SimDisk::new();
        let config = WalConfig { segment_bytes: 4 << 20, ..small_config() };
        let (wal, _) = open(&disk, config.clone()).await;
        let records = incompressible_records(5).into_iter().cycle().take(1_200).collect::<Vec<_>>();
        for chunk in records.chunks(8) {
            append_all(&wal, chunk).await;
        }
        let (segments, _) = wal.index_footprint();
        assert_eq!(segments, 1, "the records fit one segment");
        let from = records.len() as u64 - 1;
        let at = wal.frame_pos(from - 1).expect("a frame deep in the segment");
        wal.close().await.unwrap();
        let (recovered, report) =
            Wal::recover_from_frame(disk.clone(), config, (from, Some(at)), |_, _| {}).await.unwrap();
        assert!(report.unread_bytes > 0);
        let wal = recovered.start().await.unwrap();
        second_reader_starts_near(&wal, &disk, &records, at.first_seq - 100).await;
        reads_back_from_the_start(&wal, &records).await;
        assert_eq!(wal.append(b"after").await.unwrap().seq, records.len() as u64);
        wal.close().await.unwrap();
    });
}

/// A segment that recovery did not scan (it lies below the position the owner replays from)
/// gets its sparse index from its readers: the first reader scans it from its first frame,
/// and a reader made afterwards for a record deep in it starts near that record, as a
/// consumer's next poll does, instead of scanning the segment again from its start.
#[test]
fn readers_index_a_segment_recovery_did_not_scan() {
    run(async {
        let disk = SimDisk::new();
        let config = WalConfig { segment_bytes: 1 << 20, ..small_config() };
        let (wal, _) = open(&disk, config.clone()).await;
        let records = incompressible_records(3).into_iter().cycle().take(1_500).collect::<Vec<_>>();
        for chunk in records.chunks(8) {
            append_all(&wal, chunk).await;
        }
        let (segments, _) = wal.index_footprint();
        assert!(segments >= 2, "the records fill more than one segment");
        wal.close().await.unwrap();
        // Replaying from the last record leaves the sealed segments unscanned.
        let from = records.len() as u64 - 1;
        let (recovered, _) = Wal::recover_from(disk.clone(), config, from, |_, _| {}).await.unwrap();
        let wal = recovered.start().await.unwrap();
        second_reader_starts_near(&wal, &disk, &records, 600).await;
        reads_back_from_the_start(&wal, &records).await;
        wal.close().await.unwrap();
    });
}

/// Recovery reads each chunk of the log once: a frame that begins in one chunk and ends in
/// the next is taken from the chunk read ahead, not read again from its own start.
#[test]
fn recovery_reads_each_chunk_once_frames_across_chunks_included() {
    run(async {
        let disk = SimDisk::new();
        let config = WalConfig { segment_bytes: 1 << 20, ..small_config() };
        let (wal, _) = open(&disk, config.clone()).await;
        // Incompressible records of 0.5-3 KiB in bursts: frames of one to sixteen blocks that
        // end anywhere in a 16 KiB chunk.
        let mut rng = SplitMix64::new(11);
        let records: Vec<Vec<u8>> =
            (0..1500).map(|_| (0..512 + rng.below(2560) as usize).map(|_| rng.next_u64() as u8).collect()).collect();
        for burst in records.chunks(1 + rng.below(12) as usize) {
            append_all(&wal, burst).await;
        }
        wal.close().await.unwrap();
        let logs: Vec<String> = disk.list_names().into_iter().filter(|name| name.ends_with(".log")).collect();
        let chunks: u64 =
            logs.iter().map(|name| disk.file_len(name).unwrap().div_ceil(config.read_chunk_bytes as u64)).sum();
        assert!(chunks >= 40, "the log spans {chunks} chunks");
        let before = disk.ops();
        let mut replayed = Vec::new();
        let (_recovered, report) =
            Wal::recover_with_positions(disk.clone(), config, |_, record| replayed.push(record.to_vec()))
                .await
                .unwrap();
        let ops = disk.ops() - before;
        assert_eq!(replayed, records);
        assert!(report.frames > chunks, "{} frames in {chunks} chunks", report.frames);
        // Per segment: its header, and the chunks read ahead past a sealed segment's end.
        let bound = chunks + 6 * logs.len() as u64;
        assert!(ops <= bound, "{ops} operations to recover {chunks} chunks in {} segments", logs.len());
    });
}
