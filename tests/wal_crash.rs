//! The crash campaign: random appends on the simulated disk, a crash at a random operation
//! (losing, keeping or tearing each unsynced write), recovery, and a check of every record.
//!
//! After each recovery: the records form one gap-free run of sequence numbers; every record
//! acknowledged under `Durability::Sync` is there with its bytes; every record there is one
//! that was sent with that sequence number; and open never reports corruption after a crash
//! alone. Crashes also strike during recovery itself. A failure names its seed; replay it with
//! `TRADESHARD_SIM_SEED=<seed>`, and run more with `TRADESHARD_SIM_SEEDS=<count>`.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Duration;

use tradeshard_tests::{random_record, run, seeds, sim_disk_for_seed, small_config, zeroed_config};
use tradeshard_wal::disk::{SimDisk, SplitMix64};
use tradeshard_wal::{Durability, Error, Wal, WalConfig};

/// What a campaign exercised, so that a campaign that stopped crashing anything fails.
#[derive(Debug, Default, Clone, Copy)]
struct Coverage {
    acked: u64,
    lost_unacked: u64,
    truncated_tails: u64,
    removed_segments: u64,
    crashes_during_open: u64,
}

#[derive(Default)]
struct Model {
    /// Records known to be in the log: recovered ones and acknowledged ones.
    acked: BTreeMap<u64, Vec<u8>>,
    /// Records sent in this incarnation and not (yet) acknowledged.
    sent: BTreeMap<u64, Vec<u8>>,
}

fn check_recovery(model: &mut Model, replayed: &[(u64, Vec<u8>)], durability: Durability) -> Result<(), String> {
    for (i, (seq, record)) in replayed.iter().enumerate() {
        if *seq != i as u64 {
            return Err(format!("replayed record {i} has seq {seq}: the log has a gap"));
        }
        let known = model.acked.get(seq).or_else(|| model.sent.get(seq));
        if known != Some(record) {
            return Err(format!("seq {seq} holds {} bytes that were never sent with that seq", record.len()));
        }
    }
    if durability == Durability::Sync {
        if let Some((&seq, _)) = model.acked.iter().find(|(&seq, _)| seq >= replayed.len() as u64) {
            return Err(format!("acknowledged seq {seq} lost ({} records recovered)", replayed.len()));
        }
    }
    model.acked = replayed.iter().cloned().collect();
    model.sent.clear();
    Ok(())
}

async fn verify_reads(wal: &Wal<SimDisk>, acked: &BTreeMap<u64, Vec<u8>>, rng: &mut SplitMix64) -> Result<(), String> {
    let mut reader = wal.reader(0).map_err(|e| e.to_string())?;
    let mut count = 0;
    while let Some((seq, record)) = reader.next().await.map_err(|e| e.to_string())? {
        if acked.get(&seq).map(Vec::as_slice) != Some(record) {
            return Err(format!("reader returned wrong bytes for seq {seq}"));
        }
        count += 1;
    }
    if count != acked.len() {
        return Err(format!("reader returned {count} records, the log holds {}", acked.len()));
    }
    for _ in 0..4.min(count) {
        let seq = rng.below(count as u64);
        if wal.read(seq).await.map_err(|e| e.to_string())? != acked[&seq] {
            return Err(format!("point read of seq {seq} returned wrong bytes"));
        }
    }
    Ok(())
}

/// One appender: appends `count` records, some awaited one by one, some enqueued in bursts.
async fn appender(wal: Rc<Wal<SimDisk>>, model: Rc<RefCell<Model>>, seed: u64, count: usize) {
    let mut rng = SplitMix64::new(seed);
    let mut done = 0;
    while done < count {
        let burst = 1 + rng.below(6) as usize;
        let mut tickets = Vec::new();
        for _ in 0..burst {
            let record = random_record(&mut rng, 4096);
            match wal.enqueue(&record) {
                Ok(ticket) => {
                    model.borrow_mut().sent.insert(ticket.seq(), record.clone());
                    tickets.push((ticket, record));
                }
                Err(Error::Backpressure { .. }) => break,
                Err(_) => return,
            }
        }
        done += tickets.len().max(1);
        for (ticket, record) in tickets {
            match ticket.await {
                Ok(ack) => {
                    let mut model = model.borrow_mut();
                    model.sent.remove(&ack.seq);
                    model.acked.insert(ack.seq, record);
                }
                Err(_) => return,
            }
        }
    }
}

async fn run_seed(seed: u64, config: &WalConfig, coverage: &mut Coverage) -> Result<(), String> {
    let mut rng = SplitMix64::new(seed);
    let disk = sim_disk_for_seed(seed);
    let model = Rc::new(RefCell::new(Model::default()));
    let durability = config.durability;
    for incarnation in 0..4 {
        if rng.one_in(6) {
            disk.crash_at_op(disk.ops() + 1 + rng.below(8));
        }
        let mut replayed = Vec::new();
        let opened = Wal::open(disk.clone(), config.clone(), |seq, r| replayed.push((seq, r.to_vec()))).await;
        let wal = match opened {
            // Power was cut while the segment preparation the open started ran alongside its
            // last steps: the open returned, then the machine went down.
            Ok(_) if disk.is_down() => {
                coverage.crashes_during_open += 1;
                disk.crash(rng.next_u64());
                continue;
            }
            Ok((wal, report)) => {
                coverage.truncated_tails += report.truncated.is_some() as u64;
                coverage.removed_segments += report.removed_segment.is_some() as u64;
                let model = model.borrow();
                coverage.lost_unacked += model.sent.keys().filter(|&&s| s >= report.next_seq).count() as u64;
                Rc::new(wal)
            }
            Err(_) if disk.is_down() => {
                coverage.crashes_during_open += 1;
                disk.crash(rng.next_u64());
                continue;
            }
            Err(error) => return Err(format!("incarnation {incarnation}: open failed after a crash: {error}")),
        };
        disk.crash_at_op(u64::MAX);
        coverage.acked += model.borrow().acked.len() as u64;
        check_recovery(&mut model.borrow_mut(), &replayed, durability)
            .map_err(|e| format!("incarnation {incarnation}: {e}"))?;
        let recovered = model.borrow().acked.clone();
        verify_reads(&wal, &recovered, &mut rng).await.map_err(|e| format!("incarnation {incarnation}: {e}"))?;

        disk.crash_at_op(disk.ops() + 1 + rng.below(80));
        let tasks: Vec<_> = (0..1 + rng.below(8))
            .map(|_| {
                let task = appender(wal.clone(), model.clone(), rng.next_u64(), 1 + rng.below(40) as usize);
                glommio::spawn_local(task)
            })
            .collect();
        for task in tasks {
            task.await;
        }
        drop(wal);
        disk.crash(rng.next_u64());
    }
    let mut replayed = Vec::new();
    let (wal, _) = Wal::open(disk.clone(), config.clone(), |seq, r| replayed.push((seq, r.to_vec())))
        .await
        .map_err(|e| format!("final open failed: {e}"))?;
    check_recovery(&mut model.borrow_mut(), &replayed, durability).map_err(|e| format!("final: {e}"))?;
    wal.close().await.map_err(|e| format!("close: {e}"))
}

/// Half `part` of the campaign's seeds: the halves are tests of their own, which the test
/// threads run side by side.
fn campaign(default_seeds: u64, part: usize, config: WalConfig) {
    let all = seeds(default_seeds);
    let half = all.len().div_ceil(2);
    let seeds: Vec<u64> = all.into_iter().skip(part * half).take(half).collect();
    let count = seeds.len();
    let (durability, preallocation) = (config.durability, config.preallocation);
    let coverage = run(async move {
        let mut coverage = Coverage::default();
        for seed in seeds {
            if let Err(failure) = run_seed(seed, &config, &mut coverage).await {
                panic!(
                    "seed {seed} ({durability:?}, {preallocation:?}): {failure}\nreplay with TRADESHARD_SIM_SEED={seed}"
                );
            }
        }
        coverage
    });
    println!("crash campaign: {count} seeds, {durability:?}, {preallocation:?}, no violation; {coverage:?}");
    if count >= 100 {
        assert!(
            coverage.acked > 0
                && coverage.lost_unacked > 0
                && coverage.truncated_tails > 0
                && coverage.crashes_during_open > 0,
            "the campaign no longer exercises crashes: {coverage:?}"
        );
    }
}

/// The tests of one campaign, one for each half of its seeds.
macro_rules! campaign_halves {
    ($name:ident, $config:expr) => {
        mod $name {
            use super::*;

            #[test]
            fn first_half_of_the_seeds() {
                campaign(250, 0, $config);
            }

            #[test]
            fn second_half_of_the_seeds() {
                campaign(250, 1, $config);
            }
        }
    };
}

campaign_halves!(acknowledged_records_survive_crashes_exactly_once, small_config());

campaign_halves!(acknowledged_records_survive_crashes_with_segments_prepared_ahead, zeroed_config());

campaign_halves!(
    buffered_crashes_lose_only_a_suffix_and_never_look_corrupt,
    WalConfig { durability: Durability::Buffered { sync_interval: Duration::from_micros(200) }, ..zeroed_config() }
);

/// A process killed between a write and its sync leaves the write readable but not durable;
/// the next open reads it as the log's tail, so it must make it durable before it serves it or
/// writes after it: a power loss after that open keeps every record the open found.
#[test]
fn the_tail_an_open_finds_unsynced_is_made_durable_before_the_log_starts() {
    run(async {
        let hour = Durability::Buffered { sync_interval: Duration::from_secs(3600) };
        for seed in 0..20u64 {
            let disk = SimDisk::new();
            let config = WalConfig { durability: hour, ..small_config() };
            let (wal, _) = Wal::open(disk.clone(), config.clone(), |_, _| {}).await.unwrap();
            for n in 0..40u8 {
                wal.append(&[n; 100]).await.unwrap();
            }
            // The process dies: nothing synced the appends, but the files hold them.
            drop(wal);
            let mut found = 0u64;
            let (reopened, _) = Wal::open(disk.clone(), config.clone(), |_, _| found += 1).await.unwrap();
            assert_eq!(found, 40, "seed {seed}: the open read every record the files hold");
            drop(reopened);
            disk.crash(seed);
            let mut kept = 0u64;
            let (wal, _) = Wal::open(disk.clone(), config, |_, _| kept += 1).await.unwrap();
            assert_eq!(kept, 40, "seed {seed}: power lost after the open kept what it found");
            wal.close().await.unwrap();
        }
    });
}
