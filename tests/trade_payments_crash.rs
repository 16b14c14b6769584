//! Power loss at every step of trades paid from balances: two shards on simulated disks, buyers
//! and merchants in each, buyers funded by deposits, trades created, paid from the buyer's
//! balance, partly refunded and settled, the merchant credited in the trade's shard or, in the
//! other, through the activity the Settled record begins (its Credit branch tried and confirmed
//! by the activity manager's protocol). Each incarnation ends in a crash at a random operation
//! of either disk, and a fraction of the settlements' credits stop on purpose after a random
//! number of steps. Checkpoints are taken all the while (a crash lands in one's write and
//! switch as often as anywhere), and trades beyond a few a shard leave memory for the
//! table on disk at each, so that replay starts from a checkpoint's balances and meets changes
//! to trades the table holds.
//!
//! After each reopen, recovery carries out every credit not completed, every request whose
//! answer was lost is sent again (creates, payments, refunds, settles), and the checks are:
//! every trade is in the state its acknowledged requests made; every balance is what the
//! acknowledged deposits, payments, refunds and settlements make it (each once); no account
//! holds a reservation; the money in transit is what the paid trades not yet settled hold; and
//! balances plus money in transit equal the deposits. A failure names its seed
//! (`TRADESHARD_SIM_SEED=<seed>`).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

use tradeshard_shard::{
    finish_activity, settlement_activity, AccountCommand, AccountOp, Command, Currency, Move, NewTrade, Receipt,
    Refusal, Shard, TradeError, TradeId, TradeStatus, Upkeep, UserRouting,
};
use tradeshard_tests::{
    call, campaign_shard_config, run_campaign_part, sim_disk_for_seed, upkeep_on_request, ShardPair as Pair,
    SMALL_TRADE_MEMORY,
};
use tradeshard_wal::disk::{SimDisk, SplitMix64};

const ROUTING: UserRouting = UserRouting { logical_shards: 2, physical_shards: 2 };
const USERS: u64 = 8;

fn shard_of(user: u64) -> u32 {
    ROUTING.physical_of_user(user)
}

fn cny() -> Currency {
    Currency::parse("CNY").unwrap()
}

/// A request of the campaign, kept to be sent again when its answer is lost.
#[derive(Clone, Debug)]
enum Request {
    Deposit(AccountCommand),
    Create { buyer: u64, merchant: u64, order: u64, amount: u64 },
    Pay(TradeId),
    Refund { id: TradeId, amount: u64, refund_no: String },
    Settle(TradeId),
}

/// A trade as the model knows it from acknowledged answers.
#[derive(Clone, Copy, Debug)]
struct TradeModel {
    buyer: u64,
    merchant: u64,
    amount: u64,
    status: TradeStatus,
    refunded: u64,
}

#[derive(Default)]
struct Model {
    deposits: Vec<(u64, u64)>,
    trades: HashMap<TradeId, TradeModel>,
    /// Order number → the trade it made, for creates sent again.
    orders: HashMap<u64, TradeId>,
    lost: Vec<Request>,
}

/// What the campaign went through, so that a run shows it reached the cases it is about.
#[derive(Default, Clone, Copy, Debug)]
struct Seen {
    paid: usize,
    refused: usize,
    settled_near: usize,
    settled_far: usize,
    credits_recovered: usize,
    credits_stopped: usize,
    retried: usize,
    checkpoints: usize,
    opened_from_checkpoint: usize,
    /// Trades found only in the table on disk at the checks.
    cold_at_checks: u64,
}

thread_local! {
    static SEEN: RefCell<Seen> = RefCell::new(Seen::default());
}

fn seen(note: impl FnOnce(&mut Seen)) {
    SEEN.with(|seen| note(&mut seen.borrow_mut()));
}

async fn open(disks: &[SimDisk; 2]) -> Result<Pair, String> {
    let mut shards = Vec::new();
    for (n, disk) in disks.iter().enumerate() {
        let config = campaign_shard_config(n as u32);
        // Checkpoints when the workload asks, trades beyond a few leaving memory for the
        // table at each: replay then starts from a checkpoint's balances and finds changes to
        // trades the table holds, some written after that checkpoint.
        let upkeep = Upkeep { trade_memory_bytes: SMALL_TRADE_MEMORY / 4, ..upkeep_on_request(false, None) };
        let shard = Shard::open_with(disk.clone(), config, 1 << 16, upkeep).await;
        let shard = shard.map_err(|e| format!("open {n}: {e}"))?;
        if shard.stats().opened.checkpoint.is_some() {
            seen(|s| s.opened_from_checkpoint += 1);
        }
        shard.set_routing(ROUTING);
        shards.push(Rc::new(shard));
    }
    let shards = [shards[0].clone(), shards[1].clone()];
    Ok(Pair { shards, budget: Cell::new(usize::MAX), key_window: None })
}

/// Carries out the credit of a settled trade whose merchant lives in the other shard, as the
/// engine's `settle` does; false if it could not finish.
async fn credit(pair: &Pair, id: TradeId) -> Result<bool, TradeError> {
    let home = id.logical_shard();
    let activity = settlement_activity(id);
    let Some(entry) = pair.shards[home as usize].activity(activity) else { return Ok(true) };
    Ok(finish_activity(pair, home, activity, &entry, u64::MAX).await?.is_some_and(|driven| driven.completed))
}

/// Sends one request; `Ok(None)` for a payment the balance could not cover.
async fn send(pair: &Pair, model: &mut Model, request: &Request) -> Result<Option<Receipt>, TradeError> {
    let shard_of_trade = |id: TradeId| &pair.shards[id.logical_shard() as usize];
    let command = match request.clone() {
        Request::Deposit(command) => {
            let user = command.user_id;
            let receipt = call(|reply| pair.shards[shard_of(user) as usize].post(command, reply)).await?;
            model.deposits.push((user, receipt.amount));
            return Ok(None);
        }
        Request::Create { buyer, merchant, order, amount } => {
            let trade = NewTrade {
                buyer_id: buyer,
                merchant_id: merchant,
                merchant_order_no: format!("O-{order}"),
                amount,
                currency: "CNY".into(),
                memo: String::new(),
            };
            let logical_shard = ROUTING.logical_of_user(buyer);
            let command = Command::Create { trade: trade.validate().expect("a valid trade"), logical_shard };
            let receipt = call(|reply| pair.shards[shard_of(buyer) as usize].submit(command, reply)).await?;
            let status = TradeStatus::Created;
            model.trades.insert(receipt.id, TradeModel { buyer, merchant, amount, status, refunded: 0 });
            model.orders.insert(order, receipt.id);
            return Ok(Some(receipt));
        }
        Request::Pay(id) => Command::Move { id, to: Move::PayFromBalance },
        Request::Refund { id, amount, refund_no } => Command::Refund { id, amount, refund_no },
        Request::Settle(id) => Command::Move { id, to: Move::Settle },
    };
    let id = match &command {
        Command::Move { id, .. } | Command::Refund { id, .. } => *id,
        Command::Create { .. } => unreachable!("answered above"),
    };
    let receipt = match call(|reply| shard_of_trade(id).submit(command, reply)).await {
        Err(TradeError::Refused(Refusal::InsufficientFunds { .. })) => {
            seen(|s| s.refused += 1);
            return Ok(None);
        }
        other => other?,
    };
    let trade = model.trades.get_mut(&id).expect("a trade the model made");
    (trade.status, trade.refunded) = (receipt.status, receipt.refunded_amount);
    match request {
        Request::Pay(_) => seen(|s| s.paid += 1),
        Request::Settle(_) if shard_of(trade.merchant) == id.logical_shard() => seen(|s| s.settled_near += 1),
        Request::Settle(_) => {
            seen(|s| s.settled_far += 1);
            // A caller that stops midway leaves the credit to recovery.
            if !credit(pair, id).await? {
                seen(|s| s.credits_stopped += 1);
            }
        }
        _ => {}
    }
    Ok(Some(receipt))
}

/// Recovery: every activity not completed (a settlement's credit) carried out.
async fn recover(pair: &Pair) -> Result<(), String> {
    for home in 0..2u32 {
        for (activity, entry) in pair.shards[home as usize].unfinished_activities() {
            match finish_activity(pair, home, activity, &entry, u64::MAX).await {
                Ok(Some(driven)) if driven.completed => seen(|s| s.credits_recovered += 1),
                other => return Err(format!("recovery of {activity:#x} ({entry:?}): {other:?}")),
            }
        }
    }
    Ok(())
}

async fn check(pair: &Pair, model: &Model) -> Result<usize, String> {
    let mut balances: HashMap<u64, i128> = HashMap::new();
    for (user, amount) in &model.deposits {
        *balances.entry(*user).or_default() += i128::from(*amount);
    }
    let mut held = 0i128;
    for (id, trade) in &model.trades {
        let found = call(|reply| pair.shards[id.logical_shard() as usize].get(*id, reply))
            .await
            .map_err(|e| format!("read of {id}: {e}"))?;
        if (found.status, found.refunded_amount) != (trade.status, trade.refunded) {
            return Err(format!("trade {id}: acknowledged {trade:?}, found {found:?}"));
        }
        let (amount, refunded) = (i128::from(trade.amount), i128::from(trade.refunded));
        match trade.status {
            TradeStatus::Created | TradeStatus::Closed => continue,
            TradeStatus::Paid | TradeStatus::Refunded => held += amount - refunded,
            TradeStatus::Settled => *balances.entry(trade.merchant).or_default() += amount - refunded,
        }
        *balances.entry(trade.buyer).or_default() -= amount - refunded;
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
    let in_transit: i128 = pair.shards.iter().flat_map(|shard| shard.in_transit().into_values()).sum();
    let deposited: i128 = model.deposits.iter().map(|(_, amount)| i128::from(*amount)).sum();
    if in_transit != held || total + in_transit != deposited {
        return Err(format!(
            "balances {total} and {in_transit} in transit ({held} held by trades), deposits {deposited}"
        ));
    }
    let cold: u64 = pair.shards.iter().map(|shard| shard.stats()).map(|s| s.trades - s.trades_in_memory).sum();
    seen(|s| s.cold_at_checks += cold);
    let unfinished = pair.shards.iter().map(|shard| shard.unfinished_activities().len()).sum::<usize>();
    if unfinished != 0 {
        return Err(format!("after recovery: {unfinished} credits unfinished"));
    }
    Ok(model.trades.len())
}

/// The next request of the workload: a deposit, a new trade, or the next step of one.
fn next_request(rng: &mut SplitMix64, model: &Model, n: u64) -> Request {
    let open: Vec<(&TradeId, &TradeModel)> =
        model.trades.iter().filter(|(_, t)| !matches!(t.status, TradeStatus::Settled)).collect();
    if rng.one_in(4) || model.deposits.is_empty() {
        let user = 1 + rng.below(USERS);
        let command = AccountCommand::new(AccountOp::Deposit, user, "CNY", 1 + rng.below(1_500), &format!("d{n}"))
            .expect("a valid deposit");
        return Request::Deposit(command);
    }
    if open.is_empty() || rng.one_in(2) {
        let buyer = 1 + rng.below(USERS);
        let merchant = 1 + (buyer + rng.below(USERS - 1)) % USERS;
        return Request::Create { buyer, merchant, order: n, amount: 1 + rng.below(300) };
    }
    let (id, trade) = open[rng.below(open.len() as u64) as usize];
    match trade.status {
        TradeStatus::Created => Request::Pay(*id),
        TradeStatus::Paid | TradeStatus::Refunded if rng.one_in(3) && trade.refunded + 1 < trade.amount => {
            let amount = 1 + rng.below(trade.amount - trade.refunded - 1);
            Request::Refund { id: *id, amount, refund_no: format!("r{n}") }
        }
        _ => Request::Settle(*id),
    }
}

async fn run_seed(seed: u64) -> Result<usize, String> {
    let mut rng = SplitMix64::new(seed);
    let disks = [sim_disk_for_seed(seed), sim_disk_for_seed(seed ^ 1)];
    let mut model = Model::default();
    let mut checked = 0;
    let mut n = 0u64;
    for _ in 0..4 {
        let pair = open(&disks).await?;
        recover(&pair).await?;
        // Lost answers: sent again, in order; each takes effect once.
        for request in std::mem::take(&mut model.lost) {
            seen(|s| s.retried += 1);
            let request = match request {
                Request::Create { order, .. } if model.orders.contains_key(&order) => continue,
                request => request,
            };
            send(&pair, &mut model, &request).await.map_err(|e| format!("retried {request:?}: {e}"))?;
        }
        recover(&pair).await?;
        checked += check(&pair, &model).await?;
        let crashing = &disks[rng.below(2) as usize];
        crashing.crash_at_op(crashing.ops() + 1 + rng.below(80));
        for _ in 0..1 + rng.below(64) {
            n += 1;
            if rng.one_in(6) {
                // A checkpoint of either shard, which the crash may cut midway.
                match pair.shards[rng.below(2) as usize].checkpoint().await {
                    Ok(_) => seen(|s| s.checkpoints += 1),
                    Err(_) => break,
                }
            }
            let request = next_request(&mut rng, &model, n);
            // Now and then a settlement's caller dies after a few steps of its credit.
            pair.budget.set(if rng.one_in(4) { rng.below(3) as usize } else { usize::MAX });
            let answer = send(&pair, &mut model, &request).await;
            pair.budget.set(usize::MAX);
            if answer.is_err() {
                model.lost.push(request);
                break;
            }
        }
        drop(pair);
        disks[0].crash(rng.next_u64());
        disks[1].crash(rng.next_u64());
    }
    Ok(checked)
}

tradeshard_tests::campaign_halves!(payments_from_balances_move_money_once_and_conserve_it_after_power_loss_at_any_step);

/// Half `part` of the campaign's seeds.
fn campaign(part: usize) {
    let (count, checked) = run_campaign_part(300, part, 2, run_seed);
    let seen = SEEN.with(|seen| *seen.borrow());
    println!("trade payments crash campaign: {count} seeds, {checked} trades checked after crashes; {seen:?}");
    assert!(count < 100 || checked > 1000, "the campaign must check trades: {checked}");
    let every_path = seen.paid > 0 && seen.refused > 0 && seen.settled_near > 0 && seen.settled_far > 0;
    assert!(count < 100 || every_path && seen.credits_recovered > 0 && seen.credits_stopped > 0, "{seen:?}");
    assert!(count < 100 || seen.opened_from_checkpoint > 0 && seen.cold_at_checks > 0, "{seen:?}");
}
