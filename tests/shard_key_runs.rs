//! Order numbers that checkpoints moved out of memory into sorted runs on disk, on the
//! simulated disk: retries of old creates answer the original trade as it is now, another body
//! under an old order number (another amount, another memo) is a conflict naming the trade, runs merge and stay few, all of it again after
//! reopens; a run whose read fails refuses the create rather than creating a second trade; a
//! damaged run is refused with its path and offset.

use std::time::Duration;

use tradeshard_shard::{Command, ListQuery, Move, Refusal, Shard, TradeError, TradeId, TradeStatus, Upkeep};
use tradeshard_tests::{call, damage_in, new_trade, rolling_shard_config, run, upkeep_on_request};
use tradeshard_wal::disk::{Fault, SimDisk};

async fn open(disk: &SimDisk) -> Result<Shard<SimDisk>, TradeError> {
    Shard::open_with(disk.clone(), rolling_shard_config(), 0, upkeep_on_request(false, None)).await
}

fn create(buyer: u64, order: u64, amount: u64) -> Command {
    Command::Create { trade: new_trade(buyer, order, amount).validate().unwrap(), logical_shard: 1 }
}

/// Creates orders `orders` of buyer 1, a checkpoint after every `per_checkpoint`; their ids.
async fn create_in_checkpoints(
    shard: &Shard<SimDisk>,
    orders: std::ops::Range<u64>,
    per_checkpoint: u64,
) -> Vec<TradeId> {
    let mut ids = Vec::new();
    for order in orders {
        ids.push(call(|done| shard.submit(create(1, order, 1_000), done)).await.unwrap().id);
        if (order + 1) % per_checkpoint == 0 {
            shard.checkpoint().await.unwrap();
        }
    }
    ids
}

/// Every create of `ids` (orders from 0) sent again answers its trade, marked a repeat; the
/// same order number with another amount is a conflict naming that trade.
async fn retries_answer_the_originals(shard: &Shard<SimDisk>, ids: &[TradeId]) {
    for (order, id) in ids.iter().enumerate() {
        let again = call(|done| shard.submit(create(1, order as u64, 1_000), done)).await.unwrap();
        assert_eq!((again.id, again.replayed), (*id, true), "order {order} answered by its trade");
        let other = call(|done| shard.submit(create(1, order as u64, 999), done)).await;
        match other {
            Err(TradeError::Refused(Refusal::IdempotencyConflict { existing, .. })) => {
                assert_eq!(existing, Some(*id), "the conflict names the trade holding order {order}")
            }
            other => panic!("another body under order {order}: {other:?}"),
        }
        // A run keeps no body hash: the trade's own memo tells this from a repeat.
        let Command::Create { mut trade, logical_shard } = create(1, order as u64, 1_000) else { unreachable!() };
        trade.memo.push_str(", changed");
        let other = call(|done| shard.submit(Command::Create { trade, logical_shard }, done)).await;
        assert!(
            matches!(&other, Err(TradeError::Refused(Refusal::IdempotencyConflict { existing: Some(e), .. })) if e == id),
            "another memo under order {order}: {other:?}"
        );
    }
}

/// The runs of order keys on the disk.
fn run_files(disk: &SimDisk) -> Vec<String> {
    disk.list_names().into_iter().filter(|name| name.starts_with("orders-")).collect()
}

#[test]
fn order_numbers_in_runs_answer_retries_and_conflicts_before_and_after_reopens() {
    run(async {
        let disk = SimDisk::new();
        let shard = open(&disk).await.unwrap();
        // 16 checkpoints of 40: runs of level 0 merge by fours into level 1, those into one of
        // level 2.
        let ids = create_in_checkpoints(&shard, 0..640, 40).await;
        let stats = shard.stats().checkpoints;
        // Each trade is in the runs twice: its order key, and its place in its user's list.
        assert_eq!(stats.key_run_entries, 2 * 640, "every order key is in a run");
        assert_eq!(stats.key_runs, 2, "16 runs of each store merged by fours leave one");
        assert!(stats.key_run_memory_bytes > 0);
        assert!(stats.sort_room_bytes > 0, "the checkpoints keep the memory they sorted in: {stats:?}");
        assert_eq!(stats.key_run_entries_written, 2 * 640, "the checkpoints wrote each key once (merges not counted)");
        assert!(
            stats.busy_us > 0 && stats.merge_busy_us > 0,
            "the checkpoints' and the merges' turns are timed: {stats:?}"
        );
        retries_answer_the_originals(&shard, &ids).await;
        // A checkpoint with nothing applied since the last lets it go, as an idle shard's maps.
        shard.checkpoint().await.unwrap();
        assert_eq!(shard.stats().checkpoints.sort_room_bytes, 0, "an idle shard keeps no room to sort in");
        // New order numbers are still free, and their trades follow on.
        let more = create_in_checkpoints(&shard, 640..680, 20).await;
        assert_eq!(shard.stats().checkpoints.key_runs, 2 * 3);
        assert!(more.iter().all(|id| id.counter() > ids.last().unwrap().counter()));
        shard.close().await.unwrap();
        // Runs of merged-away levels go once no checkpoint kept lists them.
        // The latest checkpoint lists 3 runs, the one before it 2 of them.
        assert_eq!(run_files(&disk).len(), 3, "unlisted runs are removed: {:?}", run_files(&disk));

        let shard = open(&disk).await.unwrap();
        assert_eq!(shard.stats().checkpoints.key_run_entries, 2 * 680);
        let all: Vec<TradeId> = ids.into_iter().chain(more).collect();
        retries_answer_the_originals(&shard, &all).await;
        assert_eq!(shard.stats().trades, 680, "no retry created a trade");
        shard.close().await.unwrap();
    });
}

#[test]
fn a_repeat_of_an_order_number_in_a_run_answers_its_trade_as_it_is_now() {
    run(async {
        let disk = SimDisk::new();
        let shard = open(&disk).await.unwrap();
        let ids = create_in_checkpoints(&shard, 0..30, 10).await;
        for &id in &ids[..10] {
            call(|done| shard.submit(Command::Move { id, to: Move::Pay }, done)).await.unwrap();
        }
        shard.checkpoint().await.unwrap();
        for (order, &id) in ids.iter().enumerate() {
            let again = call(|done| shard.submit(create(1, order as u64, 1_000), done)).await.unwrap();
            let status = if order < 10 { TradeStatus::Paid } else { TradeStatus::Created };
            assert_eq!((again.id, again.status, again.replayed), (id, status, true), "order {order}");
        }
        assert_eq!(shard.stats().trades, 30, "no repeat created a trade");
        shard.close().await.unwrap();
    });
}

#[test]
fn a_failed_read_of_a_run_refuses_the_create_and_creates_nothing() {
    run(async {
        let disk = SimDisk::new();
        let shard = open(&disk).await.unwrap();
        let ids = create_in_checkpoints(&shard, 0..10, 10).await;
        // The retry's next operation is its read of the run.
        disk.fail_op(disk.ops() + 1, Fault::Eio);
        let failed = call(|done| shard.submit(create(1, 3, 1_000), done)).await;
        assert!(matches!(failed, Err(TradeError::Log(_))), "the read's failure is the answer: {failed:?}");
        let again = call(|done| shard.submit(create(1, 3, 1_000), done)).await.unwrap();
        assert_eq!((again.id, again.replayed), (ids[3], true), "the next retry reads the run");
        assert_eq!(shard.stats().trades, 10);
        shard.close().await.unwrap();
    });
}

#[test]
fn a_damaged_run_is_refused_with_its_path_and_offset() {
    run(async {
        let disk = SimDisk::new();
        let shard = open(&disk).await.unwrap();
        create_in_checkpoints(&shard, 0..300, 300).await;
        shard.close().await.unwrap();
        let files = run_files(&disk);
        assert_eq!(files.len(), 1, "one checkpoint, one run: {files:?}");
        let run_file = files[0].clone();

        // A flipped bit in a block of keys: found by the read that needs the block, and the
        // create is refused (not taken for a new order number).
        disk.flip_bit(&run_file, 4096 + 100, 2);
        let shard = open(&disk).await.unwrap();
        let mut refused = 0;
        for order in 0..300 {
            let outcome = call(|done| shard.submit(create(1, order, 1_000), done)).await;
            if outcome.as_ref().is_err() {
                assert_eq!(damage_in(outcome, &run_file), 4096, "the damaged block's offset");
                refused += 1;
            } else {
                assert!(outcome.unwrap().replayed, "order {order} is no new trade");
            }
        }
        assert!(refused > 0, "the creates whose keys the damaged block holds are refused");
        assert_eq!(shard.stats().trades, 300);
        shard.close().await.unwrap();

        // A flipped bit at the end of the file (its footer): the open refuses.
        let len = disk.file_len(&run_file).unwrap();
        disk.flip_bit(&run_file, len - 4096 + 20, 0);
        damage_in(open(&disk).await, &run_file);
    });
}

/// Every trade of `user` by paging `page` at a time with the cursor, newest first.
async fn list_by_pages(shard: &Shard<SimDisk>, user: u64, page: usize) -> Vec<TradeId> {
    let mut listed = Vec::new();
    loop {
        let query = ListQuery { user_id: user, limit: page, before: listed.last().copied() };
        let trades = call(|done| shard.list(query, done)).await.unwrap();
        assert!(trades.iter().all(|trade| trade.buyer_id == user), "only the user's trades");
        listed.extend(trades.iter().map(|trade| trade.id));
        if trades.len() < page {
            return listed;
        }
    }
}

#[test]
fn users_lists_span_memory_and_runs_newest_first_before_and_after_reopens() {
    run(async {
        let disk = SimDisk::new();
        let shard = open(&disk).await.unwrap();
        let mut expected: Vec<Vec<TradeId>> = vec![Vec::new(); 3];
        for n in 0..420u64 {
            let user = 1 + n % 3;
            let id = call(|done| shard.submit(create(user, n, 1_000), done)).await.unwrap().id;
            expected[(user - 1) as usize].insert(0, id);
            // Runs of level 0 and 1, and the last 20 trades only in memory.
            if n % 50 == 49 {
                shard.checkpoint().await.unwrap();
            }
        }
        assert!(shard.stats().checkpoints.key_runs >= 4, "the lists span several runs");
        for _ in 0..2 {
            for user in 1..=3u64 {
                let want = &expected[(user - 1) as usize];
                let all = ListQuery { user_id: user, limit: 1_000, before: None };
                let listed: Vec<TradeId> =
                    call(|done| shard.list(all, done)).await.unwrap().iter().map(|t| t.id).collect();
                assert_eq!(&listed, want, "user {user}: every trade, newest first");
                assert_eq!(&list_by_pages(&shard, user, 7).await, want, "user {user}: by pages of 7");
            }
            let nobody = ListQuery { user_id: 99, limit: 10, before: None };
            assert!(call(|done| shard.list(nobody, done)).await.unwrap().is_empty());
            shard.checkpoint().await.unwrap();
        }
        shard.close().await.unwrap();
        let shard = open(&disk).await.unwrap();
        for user in 1..=3u64 {
            assert_eq!(&list_by_pages(&shard, user, 50).await, &expected[(user - 1) as usize], "after a reopen");
        }
        shard.close().await.unwrap();
    });
}

#[test]
fn a_checkpoint_at_the_same_position_after_an_open_keeps_the_fallbacks_runs() {
    run(async {
        let disk = SimDisk::new();
        let upkeep = Upkeep { group_idle_expiry: Some(Duration::from_millis(500)), ..upkeep_on_request(false, None) };
        let open = || Shard::open_with(disk.clone(), rolling_shard_config(), 0, upkeep);
        let shard = open().await.unwrap();
        // The fourth checkpoint lists four runs of order keys, merged into one after it; the
        // fifth lists the merged run, and the fourth is its fallback.
        create_in_checkpoints(&shard, 0..160, 40).await;
        assert_eq!(shard.stats().checkpoints.key_runs, 2, "merged: one run of orders, one of users");
        let files = run_files(&disk);
        assert_eq!(files.len(), 5, "four runs, and their merge (the newest id): {files:?}");
        let fallback = files[..4].to_vec();
        call(|done| shard.commit_offset("settlement", 0, done)).await.unwrap();
        shard.checkpoint().await.unwrap();
        shard.close().await.unwrap();

        let shard = open().await.unwrap();
        glommio::timer::sleep(Duration::from_millis(600)).await;
        // Nothing applied since the open; the idle group expires, so a checkpoint replaces the
        // latest at its position, and the one before stays the fallback, with its runs.
        assert_eq!(shard.checkpoint().await.unwrap(), Some(shard.stats().checkpoints.position));
        assert_eq!(shard.stats().checkpoints.groups_expired, 1);
        let files = run_files(&disk);
        assert!(fallback.iter().all(|run| files.contains(run)), "the fallback's runs are kept: {files:?}");
        shard.close().await.unwrap();
    });
}

/// Trades created while a checkpoint is under way (between its snapshot and the moment the
/// keys it wrote leave memory) land in users' lists that the checkpoint's runs also hold in
/// part: every list comes out whole, each trade once, and every order number answers its trade,
/// after that checkpoint, after the next one and after a reopen.
#[test]
fn keys_written_while_a_checkpoint_is_under_way_stay_whole() {
    run(async {
        let disk = SimDisk::new();
        let shard = open(&disk).await.unwrap();
        let buyer = |n: u64| 1 + n % 3;
        let mut ids = Vec::new();
        for n in 0..60u64 {
            ids.push(call(|done| shard.submit(create(buyer(n), n, 1_000), done)).await.unwrap().id);
        }
        let finished = std::rc::Rc::new(std::cell::Cell::new(false));
        let checkpoint = shard.checkpoint();
        let checkpoint = glommio::spawn_local({
            let finished = finished.clone();
            async move {
                let taken = checkpoint.await;
                finished.set(true);
                taken
            }
        });
        let mut during = 0;
        while !finished.get() || ids.len() < 120 {
            during += u64::from(!finished.get());
            let n = ids.len() as u64;
            ids.push(call(|done| shard.submit(create(buyer(n), n, 1_000), done)).await.unwrap().id);
        }
        checkpoint.await.unwrap();
        assert!(during > 1, "creates landed while the checkpoint was under way ({during})");
        let check = |shard: Shard<SimDisk>, ids: Vec<TradeId>, when: &'static str| async move {
            for user in 1..=3u64 {
                let mut want: Vec<TradeId> =
                    (0..ids.len()).filter(|&n| buyer(n as u64) == user).map(|n| ids[n]).collect();
                want.reverse();
                assert_eq!(list_by_pages(&shard, user, 7).await, want, "{when}: user {user}, newest first");
            }
            for (n, id) in ids.iter().enumerate() {
                let again = call(|done| shard.submit(create(buyer(n as u64), n as u64, 1_000), done)).await.unwrap();
                assert_eq!((again.id, again.replayed), (*id, true), "{when}: order {n} answers its trade");
            }
            assert_eq!(shard.stats().trades, ids.len() as u64, "{when}: no retry created a trade");
            shard
        };
        let shard = check(shard, ids.clone(), "after the checkpoint").await;
        shard.checkpoint().await.unwrap();
        let shard = check(shard, ids.clone(), "after the next one").await;
        shard.close().await.unwrap();
        let shard = check(open(&disk).await.unwrap(), ids, "after a reopen").await;
        shard.close().await.unwrap();
    });
}

/// Checkpoints that fail leave their frozen layers, and what comes between them moves down
/// into those before the next freeze: retries, listings and the runs stay whole through three
/// failed checkpoints, the one that succeeds after them, and a reopen.
#[test]
fn keys_written_between_failed_checkpoints_stay_whole() {
    run(async {
        let disk = SimDisk::new();
        let shard = open(&disk).await.unwrap();
        let (mut ids, mut newest_first) = (Vec::new(), Vec::new());
        for round in 0..4u64 {
            for n in 0..40 {
                let id = call(|done| shard.submit(create(1, round * 40 + n, 1_000), done)).await.unwrap().id;
                ids.push(id);
                newest_first.insert(0, id);
            }
            if round < 3 {
                // Its first device operation fails, after its snapshot froze the maps.
                disk.fail_op(disk.ops() + 1, Fault::Eio);
                assert!(shard.checkpoint().await.is_err(), "round {round}");
                disk.clear_faults();
            }
        }
        assert_eq!(shard.stats().checkpoints.failed, 3);
        retries_answer_the_originals(&shard, &ids).await;
        assert_eq!(list_by_pages(&shard, 1, 9).await, newest_first);
        shard.checkpoint().await.unwrap();
        assert_eq!(shard.stats().checkpoints.key_run_entries, 2 * 160, "every order key and list place in a run");
        retries_answer_the_originals(&shard, &ids).await;
        assert_eq!(list_by_pages(&shard, 1, 9).await, newest_first);
        shard.close().await.unwrap();
        let shard = open(&disk).await.unwrap();
        retries_answer_the_originals(&shard, &ids).await;
        assert_eq!(list_by_pages(&shard, 1, 9).await, newest_first, "after a reopen");
        shard.close().await.unwrap();
    });
}
