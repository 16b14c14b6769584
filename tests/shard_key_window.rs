//! The key window (`Upkeep::key_window`), on the simulated disk: runs of keys older than the
//! window, and below the fallback checkpoint, let their Bloom filters go; a create repeating an
//! order number older than the window makes a new trade, a deposit repeating an old request
//! number moves money again, while numbers within the window still answer their originals; a
//! trade is found by its order number however old; a reopen, from the latest checkpoint or
//! after a crash, replays without finding a key twice. Without a window, nothing is forgotten.
//! A power-loss campaign with a window of zero (every run goes past it as soon as the
//! fallback checkpoint allows) and a few order numbers used again and again: every open
//! succeeds, every acknowledged trade reads back, and each order number finds its newest
//! trade.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use tradeshard_shard::{
    account_request_key, body_hash, finish_activity, order_key, settlement_activity, AccountCommand, AccountOp,
    ActivityState, BranchAction, BranchPlan, BranchState, CancelReason, Command, Currency, Decision, ListQuery, Move,
    NewTrade, OrderLookup, Refusal, Shard, Step, StepAnswer, StepOutcome, TradeError, TradeId, Upkeep, UserRouting,
};
use tradeshard_tests::{
    call, new_trade, rolling_shard_config, run, run_campaign_part, sim_disk_for_seed, upkeep_on_request, ShardPair,
};
use tradeshard_wal::disk::{SimDisk, SplitMix64};

const WINDOW: Duration = Duration::from_millis(20);

/// Checkpoints on request; retention takes every segment below the fallback checkpoint, so
/// that the log no longer holds its first record (while it does, an open that loads no
/// checkpoint could replay it all, and no run goes past the window).
fn upkeep(window: Option<Duration>) -> Upkeep {
    Upkeep { key_window: window, ..upkeep_on_request(false, Some(0)) }
}

async fn open(disk: &SimDisk, window: Option<Duration>) -> Result<Shard<SimDisk>, TradeError> {
    Shard::open_with(disk.clone(), rolling_shard_config(), 0, upkeep(window)).await
}

async fn create(shard: &Shard<SimDisk>, order: u64, amount: u64) -> (TradeId, bool) {
    let command = Command::Create { trade: new_trade(1, order, amount).validate().unwrap(), logical_shard: 1 };
    let receipt = call(|done| shard.submit(command, done)).await.unwrap();
    (receipt.id, receipt.replayed)
}

async fn deposit(shard: &Shard<SimDisk>, request_no: &str) -> bool {
    let command = AccountCommand::new(AccountOp::Deposit, 7, "CNY", 100, request_no).unwrap();
    call(|done| shard.post(command, done)).await.unwrap().replayed
}

async fn find(shard: &Shard<SimDisk>, order: u64) -> OrderLookup {
    let trade = new_trade(1, order, 1);
    call(|done| shard.find_order(order_key(trade.merchant_id, &trade.merchant_order_no), done)).await.unwrap()
}

/// Orders 0..10 and deposit "d-old" in a checkpoint's runs, then, past the window, two more
/// checkpoints (the first becomes the fallback, so its runs may go past the window).
async fn old_keys_past_the_window(shard: &Shard<SimDisk>) -> Vec<TradeId> {
    let mut ids = Vec::new();
    for order in 0..10 {
        ids.push(create(shard, order, 1_000).await.0);
    }
    assert!(!deposit(shard, "d-old").await);
    shard.checkpoint().await.unwrap();
    std::thread::sleep(2 * WINDOW);
    create(shard, 100, 1_000).await;
    shard.checkpoint().await.unwrap();
    create(shard, 101, 1_000).await;
    shard.checkpoint().await.unwrap();
    ids
}

#[test]
fn keys_older_than_the_window_are_taken_as_new_and_old_trades_stay_found() {
    run(async {
        let disk = SimDisk::new();
        let shard = open(&disk, Some(WINDOW)).await.unwrap();
        let ids = old_keys_past_the_window(&shard).await;
        let stats = shard.stats().checkpoints;
        assert!(stats.key_runs_past_window >= 2, "the first checkpoint's orders and requests: {stats:?}");
        assert!(stats.key_runs_past_window_now >= 2, "{stats:?}");

        // Within the window (the second checkpoint's order, still in memory's reach): the
        // original answers.
        assert!(create(&shard, 101, 1_000).await.1, "a recent order number answers its trade");
        // Past it: a new trade under the old number, and the deposit moves money again.
        let (again, replayed) = create(&shard, 3, 1_000).await;
        assert!(!replayed && again != ids[3], "a new trade under an old order number");
        assert!(!deposit(&shard, "d-old").await, "an old request number is taken as new");
        assert_eq!(shard.balance(7, Currency::parse("CNY").unwrap()).available, 200);
        // Found by order number: the newest trade holding it, and an old one still.
        assert_eq!(find(&shard, 3).await, OrderLookup::Trade(again));
        assert_eq!(find(&shard, 4).await, OrderLookup::Trade(ids[4]));
        assert_eq!(find(&shard, 999).await, OrderLookup::Free);
        shard.close().await.unwrap();

        // A crash, and a reopen that replays the new trade beside the old one's run.
        disk.crash(11);
        let shard = open(&disk, Some(WINDOW)).await.unwrap();
        assert_eq!(find(&shard, 3).await, OrderLookup::Trade(again));
        assert_eq!(find(&shard, 5).await, OrderLookup::Trade(ids[5]));
        for id in [ids[3], again] {
            assert_eq!(call(|done| shard.get(id, done)).await.unwrap().id, id, "both trades are held");
        }
        assert_eq!(create(&shard, 3, 1_000).await, (again, true), "the new trade is within the window");
        shard.close().await.unwrap();
    });
}

/// The order key of order `order` of buyer 1, and the body hash of its create of `amount`.
fn key_and_body(order: u64, amount: u64) -> (u128, u64) {
    let trade = new_trade(1, order, amount);
    let currency = Currency::parse(&trade.currency).unwrap();
    let body = body_hash(trade.buyer_id, trade.amount, currency, &trade.memo);
    (order_key(trade.merchant_id, &trade.merchant_order_no), body)
}

/// What the engine's open asks of a buyer's shard for a claim left pending by a stop: a trade
/// past the window is the claim's only with the claim's body (its own trade, aged past the
/// window during a long stop, is confirmed, not released; a trade of an earlier use of the
/// number is not); a trade within the window is the claim's whatever the body.
#[test]
fn a_pending_claim_finds_its_own_trade_past_the_window_by_its_body() {
    run(async {
        let disk = SimDisk::new();
        let opened = open(&disk, Some(WINDOW)).await.unwrap();
        let ids = old_keys_past_the_window(&opened).await;
        let shard = &opened;
        let claims_trade = |key, body| call(move |done| shard.find_claims_trade(key, body, done));

        let (old_key, old_body) = key_and_body(4, 1_000);
        assert_eq!(shard.find_claims_trade_in_memory(old_key), None, "past the window: read and compared");
        assert_eq!(claims_trade(old_key, old_body).await.unwrap(), OrderLookup::Trade(ids[4]));
        let (_, other_body) = key_and_body(4, 999);
        assert_eq!(claims_trade(old_key, other_body).await.unwrap(), OrderLookup::Free, "an earlier use's trade");

        // Within the window (the last checkpoint's run), and in memory (no checkpoint since).
        let (recent_key, _) = key_and_body(101, 1_000);
        let recent = find(shard, 101).await;
        assert!(matches!(recent, OrderLookup::Trade(_)));
        assert_eq!(claims_trade(recent_key, other_body).await.unwrap(), recent, "within the window");
        let (newest, _) = create(shard, 102, 1_000).await;
        let (newest_key, _) = key_and_body(102, 1_000);
        assert_eq!(shard.find_claims_trade_in_memory(newest_key), Some(OrderLookup::Trade(newest)));

        let (unused_key, unused_body) = key_and_body(999, 1_000);
        assert_eq!(claims_trade(unused_key, unused_body).await.unwrap(), OrderLookup::Free);
        opened.close().await.unwrap();
    });
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

/// A transfer's retry after its activity ended and a checkpoint moved it to a run, with the
/// payer's branch either kept in the activity's entry (numbered 0, a transfer's) or on its own
/// (numbered 1) and then gone past the window while the activity was not: the repeated Begin
/// finds the activity ended, and the Try sent with it must not freeze the payer's money again
/// under a branch nothing would ever confirm or cancel. Kept in the activity, the branch is
/// remembered as long as it is: the Try answers as the repeat it is (or refused, after a
/// Cancel); on its own and forgotten, the Try is refused by its activity's decision.
#[test]
fn a_retried_try_of_an_ended_activity_whose_branch_went_past_the_window_moves_no_money() {
    for (payer_branch, decision) in [
        (0, Decision::Commit),
        (0, Decision::Cancel(CancelReason::TryRefused)),
        (1, Decision::Commit),
        (1, Decision::Cancel(CancelReason::TryRefused)),
    ] {
        run(async move {
            let disk = SimDisk::new();
            let shard = open(&disk, Some(WINDOW)).await.unwrap();
            // Enough log that retention takes its first segment.
            for order in 0..10 {
                create(&shard, order, 1_000).await;
            }
            assert!(!deposit(&shard, "funds").await);
            let cny = Currency::parse("CNY").unwrap();
            let activity = account_request_key(7, "transfer-1");
            let freeze = BranchAction::Freeze { user_id: 7, currency: cny, amount: 60 };
            let payer = BranchPlan { shard: 0, branch: payer_branch, action: freeze };
            let payee = BranchPlan {
                shard: 1,
                branch: 1 - payer_branch,
                action: BranchAction::Credit { user_id: 8, currency: cny, amount: 60 },
            };
            let branches = if payer_branch == 0 { vec![payer, payee] } else { vec![payee, payer] };
            let begin = vec![
                Step::Begin { activity, deadline_ms: u64::MAX, branches },
                Step::Try { activity, branch: payer_branch, action: freeze },
            ];
            let send = |steps: Vec<Step>| call(|reply| shard.transact(steps, reply));
            send(begin.clone()).await.unwrap();
            let outcome = match decision {
                Decision::Commit => Step::Confirm { activity, branch: payer_branch },
                Decision::Cancel(_) => Step::Cancel { activity, branch: payer_branch, action: freeze },
            };
            send(vec![Step::Decide { activity, decision }, outcome]).await.unwrap();
            let settled = shard.balance(7, cny);
            // A branch on its own, ended, goes to a run; the activity, decided but not
            // completed, stays (with the branch it keeps).
            shard.checkpoint().await.unwrap();
            std::thread::sleep(2 * WINDOW);
            send(vec![Step::Complete { activity }]).await.unwrap();
            shard.checkpoint().await.unwrap();
            assert!(!deposit(&shard, "later").await);
            shard.checkpoint().await.unwrap();
            let stats = shard.stats().checkpoints;
            assert!(stats.key_runs_past_window >= 1, "the first runs went past the window: {stats:?}");

            let retried = send(begin).await;
            match (payer_branch, decision, retried) {
                (0, Decision::Commit, Ok(answers)) => assert_eq!(
                    answers,
                    [
                        StepAnswer { outcome: StepOutcome::Begun(ActivityState::Completed(decision)), repeat: true },
                        StepAnswer { outcome: StepOutcome::Branch(BranchState::Tried), repeat: true },
                    ],
                    "answered as repeats"
                ),
                (0, Decision::Cancel(_), Err(TradeError::Refused(Refusal::BranchCancelled { .. }))) => {}
                (1, _, Err(TradeError::Refused(Refusal::StepConflict { .. }))) => {}
                (_, _, other) => panic!("a retried Try of an ended activity moves no money: {other:?}"),
            }
            let after = shard.balance(7, cny);
            let case = (payer_branch, decision);
            assert_eq!((after.available, after.frozen), (settled.available + 100, settled.frozen), "{case:?}");
            shard.close().await.unwrap();
        });
    }
}

/// The credit of a trade paid from a balance and settled to a merchant of another shard,
/// carried out but not completed (its completion lost), then driven again by recovery after
/// the merchant's shard let the branch's run go past the window: the merchant is not credited
/// twice. The credit stays in doubt, its money in transit, for want of a shard that remembers.
#[test]
fn a_settlement_credit_driven_again_past_the_window_is_not_paid_twice() {
    run(async {
        let routing = UserRouting { logical_shards: 2, physical_shards: 2 };
        let mut shards = Vec::new();
        for shard_id in 0..2 {
            let config = tradeshard_wal::WalConfig { shard_id, ..rolling_shard_config() };
            let shard = Shard::open_with(SimDisk::new(), config, 0, upkeep(Some(WINDOW))).await.unwrap();
            shard.set_routing(routing);
            shards.push(Rc::new(shard));
        }
        let pair = ShardPair {
            shards: [shards[0].clone(), shards[1].clone()],
            budget: std::cell::Cell::new(usize::MAX),
            key_window: Some(WINDOW),
        };
        let of = |shard| (1..).find(|user| routing.physical_of_user(*user) == shard).unwrap();
        let (buyer, merchant, cny) = (of(0), of(1), Currency::parse("CNY").unwrap());
        let fund = AccountCommand::new(AccountOp::Deposit, buyer, "CNY", 1_000, "fund").unwrap();
        call(|done| pair.shards[0].post(fund, done)).await.unwrap();
        let trade = NewTrade { merchant_id: merchant, ..new_trade(buyer, 1, 300) }.validate().unwrap();
        let create = Command::Create { trade, logical_shard: routing.logical_of_user(buyer) };
        let id = call(|done| pair.shards[0].submit(create, done)).await.unwrap().id;
        for to in [Move::PayFromBalance, Move::Settle] {
            call(|done| pair.shards[0].submit(Command::Move { id, to }, done)).await.unwrap();
        }
        let activity = settlement_activity(id);
        let entry = pair.shards[0].activity(activity).expect("the credit is recorded with the settle");
        // The credit's Try and Confirm reach the merchant's shard; its completion is lost.
        pair.budget.set(1);
        let driven = finish_activity(&pair, 0, activity, &entry, now_ms()).await.unwrap().unwrap();
        assert!(driven.completed, "every branch answered (the completion was posted, and lost)");
        pair.budget.set(usize::MAX);
        assert_eq!(pair.shards[1].balance(merchant, cny).available, 300);
        assert_eq!(pair.shards[0].unfinished_activities().len(), 1);

        // The merchant's shard moves the branch to a run, then lets the run go past the window.
        pair.shards[1].checkpoint().await.unwrap();
        std::thread::sleep(2 * WINDOW);
        for n in 0..40 {
            let more = AccountCommand::new(AccountOp::Deposit, merchant + 2, "CNY", 1, &format!("d-{n}")).unwrap();
            call(|done| pair.shards[1].post(more, done)).await.unwrap();
            if n % 20 == 19 {
                pair.shards[1].checkpoint().await.unwrap();
            }
        }
        assert!(
            pair.shards[1].stats().checkpoints.key_runs_past_window >= 1,
            "{:?}",
            pair.shards[1].stats().checkpoints
        );

        for (activity, entry) in pair.shards[0].unfinished_activities() {
            let driven = finish_activity(&pair, 0, activity, &entry, now_ms()).await.unwrap().unwrap();
            assert!(!driven.completed, "the forgotten branch is not confirmed again");
        }
        assert_eq!(pair.shards[1].balance(merchant, cny).available, 300, "credited once");
        let in_transit: i128 = pair.shards.iter().map(|shard| shard.in_transit().values().sum::<i128>()).sum();
        assert_eq!(
            in_transit, 0,
            "no money made: the credit left the trade's shard once and reached the merchant once"
        );
        assert_eq!(pair.shards[0].unfinished_activities().len(), 1, "in doubt, for an operator");
    });
}

#[test]
fn while_the_log_holds_its_first_record_no_run_goes_past_the_window() {
    run(async {
        let disk = SimDisk::new();
        let upkeep = Upkeep { key_window: Some(Duration::ZERO), ..upkeep_on_request(false, None) };
        let shard = Shard::open_with(disk.clone(), rolling_shard_config(), 0, upkeep).await.unwrap();
        let ids = old_keys_past_the_window(&shard).await;
        assert_eq!(shard.stats().log_first, 0, "nothing retained away");
        assert_eq!(shard.stats().checkpoints.key_runs_past_window, 0);
        assert_eq!(create(&shard, 3, 1_000).await, (ids[3], true));
        shard.close().await.unwrap();
    });
}

#[test]
fn without_a_window_no_key_is_forgotten() {
    run(async {
        let disk = SimDisk::new();
        let shard = open(&disk, None).await.unwrap();
        let ids = old_keys_past_the_window(&shard).await;
        let stats = shard.stats().checkpoints;
        assert_eq!((stats.key_runs_past_window, stats.key_runs_past_window_now), (0, 0));
        assert_eq!(create(&shard, 3, 1_000).await, (ids[3], true));
        assert!(deposit(&shard, "d-old").await, "an old request number answers its original");
        assert_eq!(shard.balance(7, Currency::parse("CNY").unwrap()).available, 100);
        shard.close().await.unwrap();
    });
}

#[test]
fn a_run_the_fallback_checkpoint_would_replay_over_stays_within_the_window() {
    run(async {
        let disk = SimDisk::new();
        let shard = open(&disk, Some(Duration::ZERO)).await.unwrap();
        let (first, _) = create(&shard, 1, 1_000).await;
        // Enough writes that the log rolls, and retention can take its first segment.
        for order in 10..40 {
            create(&shard, order, 1_000).await;
        }
        shard.checkpoint().await.unwrap();
        let (second, _) = create(&shard, 2, 1_000).await;
        shard.checkpoint().await.unwrap();
        assert!(shard.stats().log_first > 0, "the log's first segment is gone");
        // Order 1's run lies below the fallback checkpoint: past the window. Order 2's run lies
        // above it: a replay from the fallback would meet its create, so it stays.
        assert!(!create(&shard, 1, 1_000).await.1, "order 1 is taken as new");
        assert_eq!(create(&shard, 2, 1_000).await, (second, true), "order 2 answers its trade");
        shard.close().await.unwrap();
        // The newest checkpoint damaged: the open falls back to the one before and replays
        // from there, meeting order 2's create once and order 1's second create only.
        let mut names: Vec<String> = disk.list_names().into_iter().filter(|n| n.starts_with("checkpoint-")).collect();
        names.sort();
        disk.flip_bit(&names[1], 4096 + 40, 3);
        let shard = open(&disk, Some(Duration::ZERO)).await.unwrap();
        assert!(shard.stats().opened.passed_over_damaged_checkpoint);
        assert_eq!(find(&shard, 2).await, OrderLookup::Trade(second));
        assert!(matches!(find(&shard, 1).await, OrderLookup::Trade(newer) if newer != first));
        shard.close().await.unwrap();
    });
}

/// Order numbers the campaign draws from: few, so that they come back across checkpoints.
const ORDERS: u64 = 24;

/// What the campaign went through.
#[derive(Default, Debug)]
struct Seen {
    runs_past_window: u64,
    /// Acknowledged creates that made a new trade under an order number used before.
    new_trades_under_old_numbers: usize,
    opens: usize,
}

/// Acknowledged trades by order number, in the order acknowledged.
type Acked = HashMap<u64, Vec<TradeId>>;

/// Every acknowledged trade reads back with its order number and is in its buyer's list (newest
/// first, through runs whose fence keys may be on disk), and each order number finds a trade
/// holding it that is no older than the newest acknowledged one.
async fn check(shard: &Shard<SimDisk>, acked: &Acked) -> Result<usize, String> {
    let mut checked = 0;
    let all = ListQuery { user_id: 1, limit: 100_000, before: None };
    let listed = call(|done| shard.list(all, done)).await.map_err(|e| format!("list: {e}"))?;
    let listed: Vec<u64> = listed.iter().map(|trade| trade.id.counter()).collect();
    if listed.windows(2).any(|pair| pair[0] <= pair[1]) {
        return Err(format!("the buyer's list is not newest first: {listed:?}"));
    }
    if let Some(missing) = acked.values().flatten().find(|id| listed.binary_search_by(|c| id.counter().cmp(c)).is_err())
    {
        return Err(format!("trade {missing:?} is not in its buyer's list"));
    }
    for (&order, ids) in acked {
        let want = new_trade(1, order, 1).merchant_order_no;
        for &id in ids {
            let trade = call(|done| shard.get(id, done)).await.map_err(|e| format!("trade {id:?}: {e}"))?;
            if trade.merchant_order_no != want {
                return Err(format!("trade {id:?} holds {} instead of {want}", trade.merchant_order_no));
            }
            checked += 1;
        }
        let newest = ids.iter().map(|id| id.counter()).max().expect("acknowledged");
        match find(shard, order).await {
            OrderLookup::Trade(found) if found.counter() >= newest => {
                let trade = call(|done| shard.get(found, done)).await.map_err(|e| format!("found {found:?}: {e}"))?;
                if trade.merchant_order_no != want {
                    return Err(format!("order {order} finds trade {found:?} of {}", trade.merchant_order_no));
                }
            }
            other => return Err(format!("order {order} finds {other:?}, its newest acknowledged is {newest}")),
        }
        checked += 1;
    }
    Ok(checked)
}

async fn run_seed(seed: u64, seen: Rc<RefCell<Seen>>) -> Result<usize, String> {
    let mut rng = SplitMix64::new(seed);
    let disk = sim_disk_for_seed(seed);
    let mut acked = Acked::new();
    let mut checked = 0;
    for _ in 0..4 {
        let shard = open(&disk, Some(Duration::ZERO)).await.map_err(|e| format!("open: {e}"))?;
        seen.borrow_mut().opens += 1;
        checked += check(&shard, &acked).await?;
        disk.crash_at_op(disk.ops() + 1 + rng.below(400));
        for _ in 0..60 {
            if rng.one_in(6) {
                if shard.checkpoint().await.is_err() {
                    break;
                }
                continue;
            }
            let order = rng.below(ORDERS);
            let command = Command::Create { trade: new_trade(1, order, 1_000).validate().unwrap(), logical_shard: 1 };
            let Ok(receipt) = call(|done| shard.submit(command, done)).await else { break };
            let ids = acked.entry(order).or_default();
            if !receipt.replayed && !ids.is_empty() {
                seen.borrow_mut().new_trades_under_old_numbers += 1;
            }
            if !ids.contains(&receipt.id) {
                ids.push(receipt.id);
            }
        }
        seen.borrow_mut().runs_past_window += shard.stats().checkpoints.key_runs_past_window;
        drop(shard);
        disk.crash(rng.next_u64());
    }
    Ok(checked)
}

tradeshard_tests::campaign_halves!(power_loss_with_a_window_of_zero_opens_every_time_and_loses_no_trade);

/// Half `part` of the campaign's seeds.
fn campaign(part: usize) {
    let seen = Rc::new(RefCell::new(Seen::default()));
    let totals = seen.clone();
    let (count, checked) = run_campaign_part(200, part, 2, move |seed| run_seed(seed, totals.clone()));
    let seen = seen.borrow();
    println!("key window campaign: {count} seeds, {checked} checks; {seen:?}");
    assert!(count < 100 || (seen.runs_past_window > 0 && seen.new_trades_under_old_numbers > 0), "{seen:?}");
}
