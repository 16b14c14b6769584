//! Power loss at every step of flexible transactions: two shards on simulated disks, users in
//! each, funded by deposits, moving money to each other by the activity manager's protocol
//! (`shard/src/tcc_driver.rs`: begin with the payer's Try, the payee's Try, the decision with
//! the payer's Confirm or Cancel, the payee's Confirm or Cancel, completion). Each incarnation
//! ends in a crash at a random operation of either disk, and a fraction of the transfers stop
//! on purpose after a random number of steps (the initiator dying between any two of them).
//! Now and then a few transfers go as a batch (`run_activities`, each step one hand-off to each
//! shard for all of them; a repeat of one among them), and the initiator may die between any
//! two of its hand-offs.
//! Checkpoints of either shard come between transfers (the crash may cut one midway): each
//! moves the ended branches and completed activities to runs on disk, where the retries and
//! the checks below find them.
//!
//! After each reopen, recovery drives every activity not completed to its end (undecided ones
//! as past their deadline: cancelled), and the checks are: nothing is left unfinished; no
//! account holds a frozen amount or a reservation for a credit, and no money is in transit;
//! every balance is what the acknowledged deposits and the transfers' decisions make it, and
//! the balances sum to the deposits (money conserved); every acknowledged transfer's activity
//! ended as acknowledged, and a retry of it answers the same; a Try arriving after its
//! activity was cancelled is refused. A failure names its seed (`TRADESHARD_SIM_SEED=<seed>`).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

use tradeshard_shard::{
    account_request_key, finish_activity, run_activities, run_activity, AccountCommand, AccountOp, ActivityState,
    BatchDriven, BranchAction, BranchPlan, Currency, Decision, FoundActivity, PlannedActivity, Refusal, Shard, Step,
    TradeError,
};
use tradeshard_tests::{call, campaign_shard_config, run_campaign_part, sim_disk_for_seed, ShardPair as Pair};
use tradeshard_wal::disk::{SimDisk, SplitMix64};
use tradeshard_wal::WalConfig;

/// Users 1..=3 live in shard 0, users 4..=6 in shard 1.
const USERS: u64 = 6;

fn shard_of(user: u64) -> u32 {
    u32::from(user > 3)
}

fn config(shard_id: u32) -> WalConfig {
    campaign_shard_config(shard_id)
}

fn cny() -> Currency {
    Currency::parse("CNY").unwrap()
}

#[derive(Clone, Debug)]
struct Transfer {
    from: u64,
    to: u64,
    amount: u64,
    request_no: String,
}

impl Transfer {
    fn activity(&self) -> u128 {
        account_request_key(self.from, &self.request_no)
    }

    fn branches(&self) -> Vec<BranchPlan> {
        let (currency, amount) = (cny(), self.amount);
        vec![
            BranchPlan {
                shard: shard_of(self.from),
                branch: 0,
                action: BranchAction::Freeze { user_id: self.from, currency, amount },
            },
            BranchPlan {
                shard: shard_of(self.to),
                branch: 1,
                action: BranchAction::Credit { user_id: self.to, currency, amount },
            },
        ]
    }
}

/// An activity of `home`, in memory or in a run.
async fn find(pair: &Pair, home: u32, activity: u128) -> Result<Option<FoundActivity>, TradeError> {
    let found = call(|reply| pair.shards[home as usize].find_activity(activity, reply)).await?;
    if let Some(FoundActivity::Ended(_)) = found {
        SEEN.with(|seen| seen.borrow_mut().found_in_runs += 1);
    }
    Ok(found)
}

/// A transfer as the engine makes one: an activity under way in memory is finished; otherwise
/// it is run, and a retry whose own Try is refused (its branch cancelled, maybe in a run) is
/// answered from the activity's record. `Ok(None)`: refused at its start, nothing recorded.
async fn transfer(pair: &Pair, transfer: &Transfer) -> Result<Option<Decision>, TradeError> {
    let (home, activity) = (shard_of(transfer.from), transfer.activity());
    if let Some(entry) = pair.shards[home as usize].activity(activity) {
        let driven = finish_activity(pair, home, activity, &entry, u64::MAX).await?;
        return Ok(driven.map(|driven| driven.decision));
    }
    match run_activity(pair, home, activity, u64::MAX, transfer.branches()).await {
        Ok(driven) => Ok(Some(driven.decision)),
        Err(TradeError::Refused(Refusal::InsufficientFunds { .. })) => Ok(None),
        Err(TradeError::Refused(refused)) => match find(pair, home, activity).await? {
            Some(FoundActivity::Ended(ended)) => Ok(Some(ended.decision)),
            _ => Err(TradeError::Refused(refused)),
        },
        Err(error) => Err(error),
    }
}

/// Transfers as a batch makes them ([`run_activities`]: each step one hand-off per shard for
/// all of them), with those the batch left aside made alone, as the engine's `transfer_many`
/// does.
async fn transfer_batch(pair: &Pair, batch: &[Transfer]) -> Vec<Result<Option<Decision>, TradeError>> {
    let planned: Vec<PlannedActivity> = batch
        .iter()
        .map(|t| PlannedActivity {
            home: shard_of(t.from),
            activity: t.activity(),
            deadline_ms: u64::MAX,
            branches: t.branches(),
        })
        .collect();
    let mut answers = Vec::with_capacity(batch.len());
    for (t, driven) in batch.iter().zip(run_activities(pair, &planned).await) {
        answers.push(match driven {
            BatchDriven::Driven(driven) => {
                SEEN.with(|seen| seen.borrow_mut().batched += 1);
                Ok(Some(driven.decision))
            }
            BatchDriven::Alone { .. } => {
                SEEN.with(|seen| seen.borrow_mut().aside += 1);
                transfer(pair, t).await
            }
            BatchDriven::Refused(refusal) => {
                SEEN.with(|seen| seen.borrow_mut().refused_in_batch += 1);
                match refusal {
                    Refusal::InsufficientFunds { .. } => Ok(None),
                    refused => Err(TradeError::Refused(refused)),
                }
            }
        });
    }
    answers
}

/// What the campaign went through, so that a run shows it reached the cases it is about.
#[derive(Default, Clone, Copy, Debug)]
struct Seen {
    committed: usize,
    cancelled: usize,
    /// Activities recovery finished: committed, and cancelled.
    recovered_commit: usize,
    recovered_cancel: usize,
    /// Transfers whose initiator stopped on purpose between two steps.
    stopped: usize,
    /// Completed activities found in a run, and checkpoints that completed.
    found_in_runs: usize,
    checkpoints: usize,
    /// Transfers a batch drove to their decision, those it left aside, made alone, and
    /// those it refused for funds at their Begin.
    batched: usize,
    aside: usize,
    refused_in_batch: usize,
}

thread_local! {
    static SEEN: RefCell<Seen> = RefCell::new(Seen::default());
}

#[derive(Default)]
struct Model {
    /// Acknowledged deposits (user, amount), and those whose answer was lost.
    deposits: Vec<(u64, u64)>,
    lost_deposits: Vec<AccountCommand>,
    /// Transfers with the decision acknowledged (`None`: refused at the start), and those
    /// whose answer was lost.
    transfers: Vec<(Transfer, Option<Decision>)>,
    lost_transfers: Vec<Transfer>,
}

async fn open(disks: &[SimDisk; 2]) -> Result<Pair, String> {
    let a = Shard::open(disks[0].clone(), config(0), 1 << 16).await.map_err(|e| format!("open 0: {e}"))?;
    let b = Shard::open(disks[1].clone(), config(1), 1 << 16).await.map_err(|e| format!("open 1: {e}"))?;
    Ok(Pair { shards: [Rc::new(a), Rc::new(b)], budget: Cell::new(usize::MAX), key_window: None })
}

/// What recovery does: every activity not completed driven to its end.
async fn recover(pair: &Pair) -> Result<(), String> {
    for home in 0..2u32 {
        for (activity, entry) in pair.shards[home as usize].unfinished_activities() {
            let driven = finish_activity(pair, home, activity, &entry, u64::MAX).await;
            match driven {
                Ok(Some(driven)) if driven.completed => SEEN.with(|seen| match driven.decision {
                    Decision::Commit => seen.borrow_mut().recovered_commit += 1,
                    Decision::Cancel(_) => seen.borrow_mut().recovered_cancel += 1,
                }),
                other => return Err(format!("recovery of {activity:#x} ({entry:?}): {other:?}")),
            }
        }
    }
    Ok(())
}

async fn check(pair: &Pair, model: &mut Model) -> Result<usize, String> {
    let mut balances: HashMap<u64, i128> = HashMap::new();
    for (user, amount) in &model.deposits {
        *balances.entry(*user).or_default() += i128::from(*amount);
    }
    let mut checked = 0;
    for (transfer, acked) in model.transfers.clone() {
        let found = find(pair, shard_of(transfer.from), transfer.activity()).await;
        let found = found.map_err(|e| format!("{transfer:?}: {e}"))?.map(|found| found.state());
        let decision = match (acked, found) {
            (None, None) => continue,
            (Some(acked), Some(ActivityState::Completed(found))) if acked == found => found,
            other => return Err(format!("{transfer:?}: acknowledged, found {other:?}")),
        };
        SEEN.with(|seen| match decision {
            Decision::Commit => seen.borrow_mut().committed += 1,
            Decision::Cancel(_) => seen.borrow_mut().cancelled += 1,
        });
        if decision == Decision::Commit {
            *balances.entry(transfer.from).or_default() -= i128::from(transfer.amount);
            *balances.entry(transfer.to).or_default() += i128::from(transfer.amount);
        }
        // A retry answers what was acknowledged.
        let again = self::transfer(pair, &transfer).await.map_err(|e| format!("retry of {transfer:?}: {e}"))?;
        if again != Some(decision) {
            return Err(format!("retry of {transfer:?} answered {again:?}, acknowledged {decision:?}"));
        }
        // A Try that arrives after its activity was cancelled is refused.
        if let Decision::Cancel(_) = decision {
            let plan = transfer.branches()[1];
            let late = Step::Try { activity: transfer.activity(), branch: 1, action: plan.action };
            match call(|reply| pair.shards[plan.shard as usize].transact(vec![late], reply)).await {
                Err(TradeError::Refused(Refusal::BranchCancelled { .. })) => {}
                other => return Err(format!("a late Try of cancelled {transfer:?} answered {other:?}")),
            }
        }
        checked += 1;
    }
    let mut total = 0i128;
    for user in 1..=USERS {
        let found = pair.shards[shard_of(user) as usize].balance(user, cny());
        let want = balances.get(&user).copied().unwrap_or(0);
        if found.frozen != 0 || found.incoming != 0 || i128::from(found.available) != want {
            return Err(format!("user {user} holds {found:?}, the model {want}"));
        }
        total += want;
    }
    let deposited: i128 = model.deposits.iter().map(|(_, amount)| i128::from(*amount)).sum();
    if total != deposited {
        return Err(format!("balances sum to {total}, deposits to {deposited}"));
    }
    // Each shard's count is its payers' confirmed money less its payees': summed, what is
    // inside open activities, and none is open.
    let in_transit: i128 = pair.shards.iter().flat_map(|shard| shard.in_transit().into_values()).sum();
    let unfinished = pair.shards.iter().map(|shard| shard.unfinished_activities().len()).sum::<usize>();
    if in_transit != 0 || unfinished != 0 {
        return Err(format!("after recovery: {in_transit} in transit, {unfinished} activities unfinished"));
    }
    Ok(checked)
}

async fn run_seed(seed: u64) -> Result<usize, String> {
    let mut rng = SplitMix64::new(seed);
    let disks = [sim_disk_for_seed(seed), sim_disk_for_seed(seed ^ 1)];
    let mut model = Model::default();
    let mut checked = 0;
    let mut next = 0u64;
    for incarnation in 0..3 {
        let pair = open(&disks).await?;
        recover(&pair).await?;
        // Lost answers: sent again, each takes effect once.
        for command in std::mem::take(&mut model.lost_deposits) {
            let (user, amount, sent) = (command.user_id, command.amount, command.clone());
            call(|reply| pair.shards[shard_of(user) as usize].post(sent, reply))
                .await
                .map_err(|e| format!("retried deposit: {e}"))?;
            model.deposits.push((user, amount));
        }
        for lost in std::mem::take(&mut model.lost_transfers) {
            let decision = transfer(&pair, &lost).await.map_err(|e| format!("retried transfer: {e}"))?;
            model.transfers.push((lost, decision));
        }
        checked += check(&pair, &mut model).await?;
        let crashing = &disks[rng.below(2) as usize];
        crashing.crash_at_op(crashing.ops() + 1 + rng.below(80));
        for _ in 0..1 + rng.below(16) {
            next += 1;
            if rng.one_in(8) {
                match pair.shards[rng.below(2) as usize].checkpoint().await {
                    Ok(_) => SEEN.with(|seen| seen.borrow_mut().checkpoints += 1),
                    Err(_) => break,
                }
            }
            if rng.one_in(3) {
                let user = 1 + rng.below(USERS);
                let command =
                    AccountCommand::new(AccountOp::Deposit, user, "CNY", 1 + rng.below(300), &format!("d{next}"))
                        .expect("a valid deposit");
                let sent = command.clone();
                match call(|reply| pair.shards[shard_of(user) as usize].post(sent, reply)).await {
                    Ok(receipt) => model.deposits.push((user, receipt.amount)),
                    Err(_) => {
                        model.lost_deposits.push(command);
                        break;
                    }
                }
                continue;
            }
            // One transfer, or now and then a batch of a few (two of them maybe from one payer
            // with one number: one is the original, the other its repeat).
            let count = if rng.one_in(4) { 2 + rng.below(4) } else { 1 };
            let mut sent = Vec::new();
            for n in 0..count {
                let from = 1 + rng.below(USERS);
                let to = 1 + (from + rng.below(USERS - 1)) % USERS;
                let request_no = format!("t{incarnation}-{next}-{n}");
                sent.push(Transfer { from, to, amount: 1 + rng.below(200), request_no });
            }
            if count > 1 && rng.one_in(4) {
                sent.push(sent[0].clone());
            }
            // Now and then the initiator dies after a few steps.
            pair.budget.set(if rng.one_in(4) { rng.below(6) as usize } else { usize::MAX });
            let answers = match sent.len() {
                1 => vec![transfer(&pair, &sent[0]).await],
                _ => transfer_batch(&pair, &sent).await,
            };
            let stopped = pair.budget.get() == 0;
            SEEN.with(|seen| seen.borrow_mut().stopped += usize::from(stopped));
            pair.budget.set(usize::MAX);
            let mut answers = answers;
            if sent.len() > count as usize {
                // The repeat answers what its original answered, or, when the original was
                // refused at its start (nothing recorded), may be made itself, or its answer
                // lost: the model holds one of them.
                sent.pop();
                let repeat = answers.pop().expect("an answer for each");
                match (&answers[0], repeat, stopped) {
                    (Ok(None), made_or_lost, false) => answers[0] = made_or_lost,
                    (Ok(original), Ok(repeat), false) if *original != repeat => {
                        return Err(format!("a repeat in a batch answered {repeat:?}, its original {original:?}"));
                    }
                    _ => {}
                }
            }
            for (sent, answer) in sent.into_iter().zip(answers) {
                match answer {
                    Ok(decision) if !stopped => model.transfers.push((sent, decision)),
                    _ => model.lost_transfers.push(sent),
                }
            }
        }
        drop(pair);
        disks[0].crash(rng.next_u64());
        disks[1].crash(rng.next_u64());
    }
    Ok(checked)
}

tradeshard_tests::campaign_halves!(transfers_across_shards_end_once_and_conserve_money_after_power_loss_at_any_step);

/// Half `part` of the campaign's seeds.
fn campaign(part: usize) {
    let (count, checked) = run_campaign_part(300, part, 2, run_seed);
    let seen = SEEN.with(|seen| *seen.borrow());
    println!("tcc crash campaign: {count} seeds, {checked} transfers checked after crashes; {seen:?}");
    assert!(count < 100 || checked > 3 * count, "the campaign must check transfers: {checked}");
    let every_path = seen.committed > 0
        && seen.cancelled > 0
        && seen.stopped > 0
        && seen.found_in_runs > 0
        && seen.batched > 0
        && seen.aside > 0
        && seen.refused_in_batch > 0;
    assert!(count < 100 || every_path && seen.recovered_commit > 0 && seen.recovered_cancel > 0, "{seen:?}");
}
