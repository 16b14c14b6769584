//! Segments that retention removes, made the next segments (`recycle.rs` in the log): the
//! rolls after a removal use the free files, every record reads back through them before and
//! after reopens (a recycled file keeps old frames after the new ones), a segment a reader is
//! inside is removed rather than reused, the free files found at open are kept only when they
//! can serve, one removed from under the log is passed over, and the simulated machine losing
//! power at every step of a removal and of the reuse that follows loses no acknowledged
//! record.

use std::collections::BTreeMap;

use tradeshard_tests::{random_record, run, small_config, zeroed_config};
use tradeshard_wal::disk::{Disk, SimDisk, SplitMix64};
use tradeshard_wal::{Wal, WalConfig};

type Records = BTreeMap<u64, Vec<u8>>;

fn free_files(disk: &SimDisk) -> Vec<String> {
    disk.list_names().into_iter().filter(|name| name.starts_with("recycled-")).collect()
}

async fn open(disk: &SimDisk, config: &WalConfig) -> (Wal<SimDisk>, Records) {
    let mut replayed = Records::new();
    let (wal, _) = Wal::open(disk.clone(), config.clone(), |seq, record| {
        replayed.insert(seq, record.to_vec());
    })
    .await
    .expect("the log opens");
    (wal, replayed)
}

/// Appends `count` records, each awaited; returns them by sequence number.
async fn append(wal: &Wal<SimDisk>, rng: &mut SplitMix64, count: usize) -> Records {
    let mut appended = Records::new();
    for _ in 0..count {
        let record = random_record(rng, 4096);
        let at = wal.append(&record).await.expect("appended");
        appended.insert(at.seq, record);
    }
    appended
}

/// Every record of `expected` from the log's first on, read forwards and at random points.
async fn check_reads(wal: &Wal<SimDisk>, expected: &Records, rng: &mut SplitMix64) {
    let first = wal.first_seq();
    let mut reader = wal.reader(first).unwrap();
    let mut read = 0;
    while let Some((seq, record)) = reader.next().await.unwrap() {
        assert_eq!(Some(record), expected.get(&seq).map(Vec::as_slice), "record {seq} read forwards");
        read += 1;
    }
    assert_eq!(read, expected.range(first..).count(), "every record from {first} on");
    for _ in 0..20 {
        let seq = first + rng.below(read as u64);
        assert_eq!(wal.read(seq).await.unwrap(), expected[&seq], "record {seq} read at its point");
    }
}

/// The base of the `n`th segment of the log.
fn base_of_segment(wal: &Wal<SimDisk>, n: usize) -> u64 {
    wal.segments()[n].base_seq
}

#[test]
fn removed_segments_become_the_next_segments_and_every_record_reads_back() {
    for config in [small_config(), zeroed_config()] {
        run(async {
            let disk = SimDisk::new();
            let mut rng = SplitMix64::new(5);
            let (mut wal, _) = open(&disk, &config).await;
            let mut records = append(&wal, &mut rng, 240).await;
            assert!(wal.segments().len() > 6, "the records span segments");
            let keep_from = base_of_segment(&wal, 3);
            assert_eq!(wal.remove_segments_below(keep_from).await.unwrap(), 3);
            assert_eq!(free_files(&disk).len(), 3, "the three removed segments are free files");
            let created = wal.stats().segments_created;
            records.extend(append(&wal, &mut rng, 240).await);
            let stats = wal.stats();
            assert!(stats.segments_created >= created + 4, "the appends rolled past the free files");
            assert_eq!(stats.segments_recycled, 3, "each free file became a segment");
            assert!(free_files(&disk).is_empty());
            check_reads(&wal, &records, &mut rng).await;

            // Reopened: the recycled segments hold old frames past their last one, sealed and
            // at the tail; every record is replayed, and the log goes on, recycling.
            let mut recycled_after_reopens = 0;
            for round in 0..3 {
                let keep_from = base_of_segment(&wal, 2);
                wal.remove_segments_below(keep_from).await.unwrap();
                records.extend(append(&wal, &mut rng, 60 + round * 37).await);
                recycled_after_reopens += wal.stats().segments_recycled;
                wal.close().await.unwrap();
                let (reopened, replayed) = open(&disk, &config).await;
                let first = reopened.first_seq();
                assert_eq!(first, keep_from, "round {round}: the log starts where retention left it");
                assert_eq!(replayed, records.range(first..).map(|(s, r)| (*s, r.clone())).collect());
                check_reads(&reopened, &records, &mut rng).await;
                records.extend(append(&reopened, &mut rng, 30).await);
                check_reads(&reopened, &records, &mut rng).await;
                wal = reopened;
            }
            recycled_after_reopens += wal.stats().segments_recycled;
            assert!(recycled_after_reopens > 3, "the reopened log recycles too: {recycled_after_reopens}");
            wal.close().await.unwrap();
        });
    }
}

#[test]
fn a_segment_a_reader_is_inside_is_removed_not_made_free() {
    run(async {
        let disk = SimDisk::new();
        let mut rng = SplitMix64::new(9);
        let config = small_config();
        let (wal, _) = open(&disk, &config).await;
        let records = append(&wal, &mut rng, 120).await;
        let mut reader = wal.reader(0).unwrap();
        assert_eq!(reader.next().await.unwrap().map(|(seq, _)| seq), Some(0));
        let second = base_of_segment(&wal, 1);
        assert_eq!(wal.remove_segments_below(second).await.unwrap(), 1);
        assert!(free_files(&disk).is_empty(), "a segment being read is not reused");
        // The reader finishes the segment it is in, then goes on into the next.
        for seq in 1..second + 3 {
            let (at, record) = reader.next().await.unwrap().expect("a record");
            assert_eq!((at, record), (seq, records[&seq].as_slice()));
        }
        // With no reader inside, the next removal makes a free file.
        wal.remove_segments_below(base_of_segment(&wal, 1)).await.unwrap();
        drop(reader);
        wal.remove_segments_below(base_of_segment(&wal, 1)).await.unwrap();
        assert_eq!(free_files(&disk).len(), 1);
        wal.close().await.unwrap();
    });
}

#[test]
fn free_files_found_at_open_are_kept_only_when_they_can_serve() {
    run(async {
        let disk = SimDisk::new();
        let mut rng = SplitMix64::new(13);
        let config = WalConfig { recycled_segments_max: 2, ..small_config() };
        let (wal, _) = open(&disk, &config).await;
        let records = append(&wal, &mut rng, 120).await;
        let segment_zero = disk.read_file(&format!("{:020}.log", 0)).unwrap();
        wal.close().await.unwrap();
        let size = config.segment_bytes as usize;
        // One of another segment size, three of the right size (one past the limit of two),
        // and one named after a segment still in the log, a copy of it.
        disk.put_file(&format!("recycled-{:020}.seg", 1_000_001), &vec![7; size / 2]);
        for base in [1_000_002, 1_000_003, 1_000_004] {
            disk.put_file(&format!("recycled-{base:020}.seg"), &vec![0; size]);
        }
        disk.put_file(&format!("recycled-{:020}.seg", 0), &segment_zero);
        let (wal, replayed) = open(&disk, &config).await;
        assert_eq!(replayed, records, "the log itself is untouched");
        assert_eq!(
            free_files(&disk),
            vec![format!("recycled-{:020}.seg", 1_000_002), format!("recycled-{:020}.seg", 1_000_003)]
        );
        // Both serve: the next rolls use them, and the log reads back.
        let mut all = records;
        all.extend(append(&wal, &mut rng, 60).await);
        assert_eq!(wal.stats().segments_recycled, 2);
        check_reads(&wal, &all, &mut rng).await;
        wal.close().await.unwrap();
        let (_, replayed) = open(&disk, &config).await;
        assert_eq!(replayed, all);
    });
}

/// Builds the same log on a fresh disk every time: six segments or so, the first three then
/// removed by retention, and appends that roll through the free files; the machine loses
/// power at operation `crash_op` of the removal and the appends (torn writes by `seed`).
/// After the reboot every acknowledged record from the log's first on is there, and the log
/// opens and rolls on again.
async fn crash_during_recycling(config: &WalConfig, crash_op: u64, seed: u64) -> bool {
    let disk = SimDisk::new();
    let mut rng = SplitMix64::new(3);
    let (wal, _) = open(&disk, config).await;
    let mut acked = append(&wal, &mut rng, 200).await;
    let keep_from = base_of_segment(&wal, 3);
    disk.crash_at_op(disk.ops() + crash_op);
    let removed = wal.remove_segments_below(keep_from).await;
    let mut sent = Records::new();
    if removed.is_ok() {
        for _ in 0..200 {
            let record = random_record(&mut rng, 4096);
            let ticket = match wal.enqueue(&record) {
                Ok(ticket) => ticket,
                Err(_) => break,
            };
            sent.insert(ticket.seq(), record.clone());
            match ticket.await {
                Ok(at) => {
                    acked.insert(at.seq, record);
                }
                Err(_) => break,
            }
        }
    }
    let crashed = disk.is_down();
    drop(wal);
    disk.crash(seed);
    let (wal, replayed) = open(&disk, config).await;
    let first = wal.first_seq();
    assert!(first <= keep_from, "crash at op {crash_op}: the log starts at {first}, past {keep_from}");
    for (seq, record) in acked.range(first..) {
        assert_eq!(replayed.get(seq), Some(record), "crash at op {crash_op}: acknowledged record {seq}");
    }
    for (seq, record) in &replayed {
        assert!(acked.get(seq).or(sent.get(seq)) == Some(record), "crash at op {crash_op}: record {seq} never sent");
    }
    let mut all: Records = replayed;
    all.extend(append(&wal, &mut rng, 150).await);
    check_reads(&wal, &all, &mut rng).await;
    wal.close().await.unwrap();
    let (_, again) = open(&disk, config).await;
    assert_eq!(again, all.range(again.keys().next().copied().unwrap_or(0)..).map(|(s, r)| (*s, r.clone())).collect());
    crashed
}

#[test]
fn power_lost_at_every_step_of_recycling_loses_nothing_acknowledged() {
    // Every eighth operation of each policy's window, the two policies offset from each other
    // (`TRADESHARD_SIM_SEEDS=1` and above: every operation of both).
    let stride: u64 = if tradeshard_tests::seed_count(0) > 0 { 1 } else { 8 };
    for (config, first_op) in [(small_config(), 1), (zeroed_config(), 5)] {
        run(async {
            let mut crashed = 0;
            for crash_op in (first_op.min(stride)..400).step_by(stride as usize) {
                crashed += u64::from(crash_during_recycling(&config, crash_op, crash_op * 31).await);
            }
            assert!(crashed > 300 / stride, "the crashes landed inside the removal and the appends: {crashed}");
        });
    }
}

#[test]
fn a_free_file_removed_from_under_the_log_is_passed_over() {
    run(async {
        let disk = SimDisk::new();
        let mut rng = SplitMix64::new(17);
        let config = zeroed_config();
        let (wal, _) = open(&disk, &config).await;
        let mut records = append(&wal, &mut rng, 200).await;
        wal.remove_segments_below(base_of_segment(&wal, 2)).await.unwrap();
        let free = free_files(&disk);
        assert_eq!(free.len(), 2);
        // The one the next roll would take goes.
        disk.remove(free.iter().max().unwrap()).await.unwrap();
        records.extend(append(&wal, &mut rng, 200).await);
        assert_eq!(wal.stats().segments_recycled, 1, "the other one served");
        check_reads(&wal, &records, &mut rng).await;
        wal.close().await.unwrap();
    });
}
