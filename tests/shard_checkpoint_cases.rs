//! Checkpoints' cases made by hand on the simulated disk: an open reads the log from the
//! checkpoint's frame; a damaged newest checkpoint is passed over for the one before it while
//! the log still holds what that one needs, and refused (with its path and offset) once it
//! does not; a missing or cut store of created parts is refused; a checkpoint failing at any
//! step, or its rewrite at the same position, leaves the one in force; a failed removal of
//! runs merged away leaves the checkpoint in force; the memory trigger counts all the work
//! since a checkpoint's snapshot. (The power-loss campaign is `shard_checkpoints.rs`.)

use std::rc::Rc;
use std::time::Duration;

use tradeshard_shard::{Command, Shard, TradeId, Upkeep};
use tradeshard_tests::{call, damage_in, new_trade, rolling_shard_config, run, upkeep_retaining_three_segments};
use tradeshard_wal::disk::{Fault, SimDisk};

/// Writes trades and checkpoints until the log has `segments` segments and two checkpoints
/// exist; returns the disk and the trades.
async fn build(disk: &SimDisk, trades: u64) -> Vec<TradeId> {
    let shard = Shard::open_with(
        disk.clone(),
        rolling_shard_config(),
        0,
        Upkeep { retention_bytes: None, ..upkeep_retaining_three_segments() },
    )
    .await
    .unwrap();
    let mut ids = Vec::new();
    for order in 0..trades {
        let trade = new_trade(1, order, 100).validate().unwrap();
        let receipt = call(|done| shard.submit(Command::Create { trade, logical_shard: 1 }, done)).await.unwrap();
        ids.push(receipt.id);
        if order % 100 == 99 {
            shard.checkpoint().await.unwrap();
        }
    }
    shard.checkpoint().await.unwrap();
    drop(shard);
    ids
}

fn checkpoint_names(disk: &SimDisk) -> Vec<String> {
    let mut names: Vec<String> = disk.list_names().into_iter().filter(|n| n.starts_with("checkpoint-")).collect();
    names.sort();
    names
}

/// A checkpoint names a log frame near its position, and an open reads the segment holding the
/// position from that frame on, not from the segment's first frame: the bytes before it are
/// counted unread, and what was written after the checkpoint is replayed all the same.
#[test]
fn an_open_reads_the_log_from_the_checkpoints_frame() {
    run(async {
        let disk = SimDisk::new();
        let mut ids = build(&disk, 250).await;
        let shard =
            Shard::open_with(disk.clone(), rolling_shard_config(), 0, upkeep_retaining_three_segments()).await.unwrap();
        let opened = shard.stats().opened;
        assert!(opened.checkpoint.is_some());
        assert!(opened.unread_log_bytes > 0, "{opened:?}");
        assert_eq!(opened.replayed_records, 0);
        for order in 1_000..1_010 {
            let trade = new_trade(1, order, 100).validate().unwrap();
            ids.push(call(|done| shard.submit(Command::Create { trade, logical_shard: 1 }, done)).await.unwrap().id);
        }
        drop(shard);
        let shard =
            Shard::open_with(disk.clone(), rolling_shard_config(), 0, upkeep_retaining_three_segments()).await.unwrap();
        let reopened = shard.stats().opened;
        assert_eq!((reopened.checkpoint, reopened.unread_log_bytes), (opened.checkpoint, opened.unread_log_bytes));
        assert_eq!(reopened.replayed_records, 10);
        for id in ids {
            call(|done| shard.get(id, done)).await.unwrap();
        }
    });
}

#[test]
fn a_damaged_newest_checkpoint_falls_back_while_the_log_reaches_the_one_before() {
    run(async {
        let disk = SimDisk::new();
        let ids = build(&disk, 250).await;
        let names = checkpoint_names(&disk);
        assert_eq!(names.len(), 2, "the newest checkpoint and the one before it are kept: {names:?}");
        disk.flip_bit(&names[1], 4096 + 40, 3);
        let shard =
            Shard::open_with(disk.clone(), rolling_shard_config(), 0, upkeep_retaining_three_segments()).await.unwrap();
        let opened = shard.stats().opened;
        assert!(opened.passed_over_damaged_checkpoint);
        assert_eq!(opened.checkpoint, names[0].strip_prefix("checkpoint-").and_then(|n| n[..20].parse().ok()));
        for id in ids {
            call(|done| shard.get(id, done)).await.unwrap();
        }
    });
}

#[test]
fn a_damaged_checkpoint_the_log_no_longer_covers_is_refused_with_its_path_and_offset() {
    run(async {
        let disk = SimDisk::new();
        build(&disk, 400).await;
        // Retention down to the older checkpoint: the log no longer reaches back further.
        let shard =
            Shard::open_with(disk.clone(), rolling_shard_config(), 0, upkeep_retaining_three_segments()).await.unwrap();
        let trade = new_trade(2, 1, 100).validate().unwrap();
        call(|done| shard.submit(Command::Create { trade, logical_shard: 1 }, done)).await.unwrap();
        shard.checkpoint().await.unwrap();
        assert!(shard.stats().wal.segments_removed > 0, "retention removed segments");
        drop(shard);
        let names = checkpoint_names(&disk);
        let newest = names.last().unwrap().clone();
        for name in &names {
            disk.flip_bit(name, 4096 + 40, 3);
        }
        let offset = damage_in(
            Shard::open_with(disk.clone(), rolling_shard_config(), 0, upkeep_retaining_three_segments()).await,
            &newest,
        );
        assert_eq!(offset, 4096, "names the damaged page");
    });
}

#[test]
fn a_missing_or_cut_store_of_created_parts_is_refused() {
    run(async {
        let disk = SimDisk::new();
        build(&disk, 50).await;
        let parts = disk.read_file("created.parts").unwrap();
        disk.put_file("created.parts", &parts[..parts.len() / 2]);
        damage_in(
            Shard::open_with(disk.clone(), rolling_shard_config(), 0, upkeep_retaining_three_segments()).await,
            "created.parts",
        );
    });
}

/// A checkpoint that fails once its file has its name (the directory's sync failed) leaves no
/// file an open would load: it is not in force, and the next checkpoint may remove the runs it
/// lists. Every operation of a checkpoint fails in turn; after each failure no checkpoint file
/// is newer than the one in force, and a reopen finds every trade.
#[test]
fn a_checkpoint_failing_at_any_step_leaves_no_newer_file_behind() {
    run(async {
        let disk = SimDisk::new();
        let shard =
            Shard::open_with(disk.clone(), rolling_shard_config(), 0, upkeep_retaining_three_segments()).await.unwrap();
        let mut ids = Vec::new();
        let (mut failed_after_rename, mut nth) = (0, 1);
        loop {
            let trade = new_trade(1, ids.len() as u64, 100).validate().unwrap();
            ids.push(call(|done| shard.submit(Command::Create { trade, logical_shard: 1 }, done)).await.unwrap().id);
            disk.fail_op(disk.ops() + nth, Fault::Eio);
            let result = shard.checkpoint().await;
            disk.clear_faults();
            let in_force = shard.stats().checkpoints.position;
            let newer: Vec<String> = checkpoint_names(&disk)
                .into_iter()
                .filter(|name| name[11..31].parse::<u64>().unwrap() > in_force)
                .collect();
            assert!(newer.is_empty(), "step {nth}: {newer:?} beside the checkpoint in force at {in_force}");
            match result {
                Ok(_) => break,
                Err(error) => {
                    let renamed = !disk.list_names().iter().any(|name| name == "checkpoint.tmp");
                    failed_after_rename += (renamed && error.to_string().contains("sync directory")) as u32;
                }
            }
            nth += 1;
        }
        assert!(failed_after_rename > 0, "a failure after the rename was injected ({nth} steps)");
        drop(shard);
        let shard =
            Shard::open_with(disk.clone(), rolling_shard_config(), 0, upkeep_retaining_three_segments()).await.unwrap();
        for id in ids {
            call(|done| shard.get(id, done)).await.unwrap();
        }
    });
}

/// A checkpoint that replaces the one in force at its position (an idle group expires, nothing
/// applied since) and fails at the directory's sync leaves a checkpoint file at that position:
/// the one in force or its replacement, not neither. The next checkpoint then makes the old
/// in-force one its fallback, and a reopen starts from a checkpoint, not from the log's start.
#[test]
fn a_failed_rewrite_at_the_same_position_leaves_the_checkpoint_in_force() {
    run(async {
        let disk = SimDisk::new();
        let upkeep = Upkeep { group_idle_expiry: Some(Duration::from_millis(20)), ..upkeep_retaining_three_segments() };
        let shard = Shard::open_with(disk.clone(), rolling_shard_config(), 0, upkeep).await.unwrap();
        let mut ids = Vec::new();
        let mut nth = 1;
        loop {
            // A group commits (a record), a checkpoint holds it, and the group goes idle.
            let trade = new_trade(1, ids.len() as u64, 100).validate().unwrap();
            ids.push(call(|done| shard.submit(Command::Create { trade, logical_shard: 1 }, done)).await.unwrap().id);
            call(|done| shard.commit_offset(&format!("g{nth}"), 0, done)).await.unwrap();
            let in_force = shard.checkpoint().await.unwrap().expect("a checkpoint of the new records");
            glommio::timer::sleep(Duration::from_millis(30)).await;
            disk.fail_op(disk.ops() + nth, Fault::Eio);
            let result = shard.checkpoint().await;
            disk.clear_faults();
            let file =
                checkpoint_names(&disk).into_iter().find(|name| name[11..31].parse::<u64>().unwrap() == in_force);
            assert!(file.is_some(), "step {nth}: no checkpoint at {in_force} is left: {:?}", checkpoint_names(&disk));
            match result {
                Err(error) if error.to_string().contains("sync directory") => break,
                _ => nth += 1,
            }
            assert!(nth < 64, "no failure at the directory's sync was injected");
        }
        drop(shard);
        let shard = Shard::open_with(disk.clone(), rolling_shard_config(), 0, upkeep).await.unwrap();
        assert!(shard.stats().opened.checkpoint.is_some(), "the open started from a checkpoint");
        for id in ids {
            call(|done| shard.get(id, done)).await.unwrap();
        }
    });
}

/// The runs on the disk.
fn run_files(disk: &SimDisk) -> Vec<String> {
    disk.list_names().into_iter().filter(|name| name.ends_with(".run")).collect()
}

async fn create_order(shard: &Shard<SimDisk>, buyer: u64, order: u64) -> TradeId {
    let trade = new_trade(buyer, order, 100).validate().unwrap();
    call(|done| shard.submit(Command::Create { trade, logical_shard: 1 }, done)).await.unwrap().id
}

/// A checkpoint removes last the runs that merges replaced and no kept checkpoint lists. A
/// failed removal leaves that checkpoint in force, counted as written and not as failed (so
/// the next one is not due at once, and retention follows it); the next checkpoint removes
/// what was left.
#[test]
fn a_failed_removal_of_unlisted_runs_leaves_the_checkpoint_in_force() {
    // Five checkpoints of 40 creates: the first four runs of each store merged into one, which
    // the fifth lists; the next checkpoint lists the four no more, nor does the one before it.
    async fn before_the_removal(disk: &SimDisk) -> Shard<SimDisk> {
        let shard =
            Shard::open_with(disk.clone(), rolling_shard_config(), 0, upkeep_retaining_three_segments()).await.unwrap();
        for order in 0..200 {
            create_order(&shard, 1, order).await;
            if (order + 1) % 40 == 0 {
                shard.checkpoint().await.unwrap();
            }
        }
        create_order(&shard, 1, 200).await;
        shard
    }
    run(async {
        let clean = SimDisk::new();
        let shard = before_the_removal(&clean).await;
        let listed_before = run_files(&clean);
        shard.checkpoint().await.unwrap().expect("a checkpoint of the new create");
        let removed: Vec<String> = listed_before.into_iter().filter(|name| !run_files(&clean).contains(name)).collect();
        assert!(!removed.is_empty(), "the checkpoint removes the runs merged away");

        for nth in 1.. {
            assert!(nth < 500, "no failure of a run's removal was injected");
            let disk = SimDisk::new();
            let shard = before_the_removal(&disk).await;
            let before = shard.stats().checkpoints;
            disk.fail_op(disk.ops() + nth, Fault::Eio);
            let result = shard.checkpoint().await;
            disk.clear_faults();
            let after = shard.stats().checkpoints;
            let failed_removal = after.run_removals_failed > before.run_removals_failed
                || matches!(&result, Err(error) if error.to_string().contains("remove") && error.to_string().contains(".run"));
            if !failed_removal {
                continue;
            }
            assert!(matches!(result, Ok(Some(_))), "the checkpoint stands: {result:?}");
            assert_eq!(after.written, before.written + 1, "counted as written");
            assert_eq!(after.failed, before.failed, "and not as failed");
            assert!(removed.iter().any(|name| run_files(&disk).contains(name)), "a run was left behind");
            create_order(&shard, 1, 201).await;
            shard.checkpoint().await.unwrap().expect("a checkpoint of the new create");
            let left: Vec<&String> = removed.iter().filter(|name| run_files(&disk).contains(name)).collect();
            assert!(left.is_empty(), "the next checkpoint removes what was left: {left:?}");
            break;
        }
    });
}

/// What the memory trigger counts after a checkpoint (`CheckpointStats::held_bytes`) is all
/// the work applied since its snapshot, including what came while the checkpoint forgot the
/// keys it had moved to runs, a turn at a time.
#[test]
fn the_memory_held_after_a_checkpoint_is_all_the_work_since_its_snapshot() {
    run(async {
        let disk = SimDisk::new();
        let shard = Rc::new(
            Shard::open_with(disk.clone(), rolling_shard_config(), 0, upkeep_retaining_three_segments()).await.unwrap(),
        );
        create_order(&shard, 1, 0).await;
        let one = shard.stats().checkpoints.held_bytes;
        assert!(one > 0, "a create holds memory until a checkpoint");
        // Enough keys that forgetting them takes the checkpoint several turns (4,096 a turn).
        let before: u64 = 3 * 4096;
        for order in 1..before {
            create_order(&shard, order + 1, order).await;
        }
        assert_eq!(shard.stats().checkpoints.held_bytes, before * one);

        let done = Rc::new(std::cell::Cell::new(false));
        let checkpoint = glommio::spawn_local({
            let (shard, done) = (shard.clone(), done.clone());
            async move {
                let taken = shard.checkpoint().await;
                done.set(true);
                taken
            }
        });
        // The checkpoint takes its snapshot at its first turn; every create below comes after.
        futures_lite::future::yield_now().await;
        let mut since = 0;
        while !done.get() {
            create_order(&shard, before + since + 1, before + since).await;
            since += 1;
        }
        checkpoint.await.unwrap().expect("a checkpoint");
        assert!(since > 0);
        assert_eq!(shard.stats().checkpoints.held_bytes, since * one, "{since} creates since the snapshot");
    });
}
