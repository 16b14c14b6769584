//! Power loss under a shard moving money: deposits, withdrawals and transfers between its
//! users under request numbers, checkpoints taken all the while (so a crash lands in a
//! checkpoint's write and switch as often as anywhere), a crash at a random operation, reopen,
//! over and over.
//!
//! After every reopen, every request whose answer was lost is sent again and must take effect
//! exactly once (a repeat of what landed, or the request now); every acknowledged request sent
//! again answers its original receipt; every balance equals what the acknowledged requests
//! make it, and the sum of balances equals acknowledged deposits less withdrawals (money is
//! conserved). A failure names its seed (`TRADESHARD_SIM_SEED=<seed>`).

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use tradeshard_shard::{AccountCommand, AccountOp, AccountReceipt, Currency, Refusal, Shard, TradeError, Upkeep};
use tradeshard_tests::{
    call, rolling_shard_config, run_campaign_part, run_until_crash, sim_disk_for_seed, upkeep_on_request,
};
use tradeshard_wal::disk::{SimDisk, SplitMix64};

const USERS: u64 = 6;

fn upkeep() -> Upkeep {
    upkeep_on_request(false, Some(3 * rolling_shard_config().segment_bytes))
}

#[derive(Default)]
struct Model {
    /// Acknowledged requests by their command, with their receipts.
    acked: Vec<(AccountCommand, AccountReceipt)>,
    /// Requests sent whose answer was lost to the crash.
    lost: Vec<AccountCommand>,
}

/// What the campaign went through, so that a run shows it reached the cases it is about.
#[derive(Default, Clone, Copy)]
struct Seen {
    /// Lost answers whose request had landed before the crash, and those that had not.
    landed: usize,
    not_landed: usize,
    opened_from_checkpoint: usize,
}

thread_local! {
    static SEEN: RefCell<Seen> = RefCell::new(Seen::default());
}

impl Model {
    /// Each user's available balance as the acknowledged requests make it.
    fn balances(&self) -> HashMap<u64, i128> {
        let mut balances = HashMap::new();
        for (command, _) in &self.acked {
            let amount = i128::from(command.amount);
            match command.op {
                AccountOp::Deposit => *balances.entry(command.user_id).or_default() += amount,
                AccountOp::Withdraw => *balances.entry(command.user_id).or_default() -= amount,
                AccountOp::Transfer { to_user } => {
                    *balances.entry(command.user_id).or_default() -= amount;
                    *balances.entry(to_user).or_default() += amount;
                }
            }
        }
        balances
    }
}

fn command(rng: &mut SplitMix64, task: u64, n: u64, incarnation: u64) -> AccountCommand {
    let user = 1 + rng.below(USERS);
    let op = match rng.below(4) {
        0 | 1 => AccountOp::Deposit,
        2 => AccountOp::Withdraw,
        _ => AccountOp::Transfer { to_user: 1 + (user + rng.below(USERS - 1)) % USERS },
    };
    let amount = 1 + rng.below(500);
    AccountCommand::new(op, user, "CNY", amount, &format!("r{incarnation}-{task}-{n}")).expect("a valid request")
}

async fn client(shard: Rc<Shard<SimDisk>>, model: Rc<RefCell<Model>>, mut rng: SplitMix64, task: u64, inc: u64) {
    for n in 0..1 + rng.below(40) {
        let command = command(&mut rng, task, n, inc);
        let sent = command.clone();
        match call(|done| shard.post(sent, done)).await {
            Ok(receipt) => model.borrow_mut().acked.push((command, receipt)),
            Err(TradeError::Refused(Refusal::InsufficientFunds { .. })) => {}
            Err(_) => {
                model.borrow_mut().lost.push(command);
                return;
            }
        }
    }
}

async fn run_seed(seed: u64) -> Result<usize, String> {
    let mut rng = SplitMix64::new(seed);
    let disk = sim_disk_for_seed(seed);
    let model = Rc::new(RefCell::new(Model::default()));
    let mut checked = 0;
    for incarnation in 0..4 {
        let opened = Shard::open_with(disk.clone(), rolling_shard_config(), 0, upkeep()).await;
        let shard = Rc::new(opened.map_err(|e| format!("open: {e}"))?);
        if shard.stats().opened.checkpoint.is_some() {
            SEEN.with(|seen| seen.borrow_mut().opened_from_checkpoint += 1);
        }
        // Lost answers: sent again, each takes effect once (landed before, or now).
        let lost = std::mem::take(&mut model.borrow_mut().lost);
        for command in lost {
            let sent = command.clone();
            match call(|done| shard.post(sent, done)).await {
                Ok(receipt) => {
                    SEEN.with(|seen| match receipt.replayed {
                        true => seen.borrow_mut().landed += 1,
                        false => seen.borrow_mut().not_landed += 1,
                    });
                    model.borrow_mut().acked.push((command, receipt))
                }
                Err(TradeError::Refused(Refusal::InsufficientFunds { .. })) => {
                    SEEN.with(|seen| seen.borrow_mut().not_landed += 1);
                }
                Err(e) => return Err(format!("a retried request failed with the shard healthy: {e}")),
            }
        }
        // Acknowledged requests sent again answer their original receipt.
        let acked = model.borrow().acked.clone();
        for (command, receipt) in &acked {
            let sent = command.clone();
            let again = call(|done| shard.post(sent, done)).await.map_err(|e| format!("repeat of {command:?}: {e}"))?;
            if again != (AccountReceipt { replayed: true, ..*receipt }) {
                return Err(format!("{command:?} answered {again:?}, first {receipt:?}"));
            }
            checked += 1;
        }
        let cny = Currency::parse("CNY").unwrap();
        let expected = model.borrow().balances();
        for user in 1..=USERS {
            let found = shard.balance(user, cny);
            let want = expected.get(&user).copied().unwrap_or(0);
            if found.frozen != 0 || i128::from(found.available) != want {
                return Err(format!("user {user} holds {found:?}, the acknowledged requests make {want}"));
            }
        }
        let total: i128 = expected.values().sum();
        let found = shard.account_totals().get(&cny).copied().unwrap_or(0);
        if i128::try_from(found).unwrap() != total {
            return Err(format!("balances sum to {found}, deposits less withdrawals are {total}"));
        }
        let (clients, model) = (shard.clone(), model.clone());
        let client = move |task, client_rng| client(clients.clone(), model.clone(), client_rng, task, incarnation);
        run_until_crash(shard, &disk, &mut rng, 5, client).await;
    }
    Ok(checked)
}

tradeshard_tests::campaign_halves!(
    acknowledged_account_requests_survive_power_loss_exactly_once_and_money_is_conserved
);

/// Half `part` of the campaign's seeds.
fn campaign(part: usize) {
    let (count, checked) = run_campaign_part(200, part, 2, run_seed);
    let seen = SEEN.with(|seen| *seen.borrow());
    println!(
        "accounts crash campaign: {count} seeds, {checked} acknowledged requests checked after crashes; lost answers: \
         {} had landed, {} had not; {} opens from a checkpoint",
        seen.landed, seen.not_landed, seen.opened_from_checkpoint
    );
    assert!(count < 100 || checked > 1000, "the campaign must check requests: {checked}");
    assert!(count < 100 || seen.landed > 0 && seen.not_landed > 0, "crashes must cut requests both ways");
    assert!(count < 100 || seen.opened_from_checkpoint > 0, "opens must load checkpoints");
}
