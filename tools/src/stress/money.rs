//! Money in the stress campaign: one thread of the child funds a dozen users of its own and
//! moves money between them by transfers (within a shard, or TCC activities across shards),
//! journaling each request before it is sent and its outcome after; the parent, after each
//! kill, sends every request whose answer was lost again (each must take effect once: a
//! repeat of what landed, or the request now), then checks every balance against what the
//! outcomes make it, nothing reserved or in transit, and the accounts summing to the deposits.
//! Half the transfers are made by tasks on the payer's executor, so kills land in requests run
//! in place too.
//!
//! The users are the same for every cycle of a data directory, so balances carry over kills;
//! their ids are far above any buyer of the trade workload.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use tradeshard_engine::{Currency, EngineHandle, Error, Refusal};

use super::journal::{Entry, JournalWriter, MoneyOp, Outcome};

/// The money users: ids 2^60 + 1 ..= 2^60 + USERS.
const USERS: u64 = 12;
const FIRST_USER: u64 = 1 << 60;
const CURRENCY: &str = "CNY";
/// What each user is given at the start of every cycle.
const FUNDING: u64 = 5_000;

/// The child's money thread: funds the users, then transfers between them until killed.
pub(super) fn run_child(handle: &EngineHandle, journal: &mut JournalWriter, seed: u64, cycle_tag: u64) {
    let mut rng = fastrand::Rng::with_seed(seed ^ 0x004D_4F4E_4559);
    for user in FIRST_USER + 1..=FIRST_USER + USERS {
        let op = MoneyOp::Deposit { user, amount: FUNDING };
        send(handle, journal, op, &format!("fund-{cycle_tag}-{}", user - FIRST_USER));
    }
    for n in 0.. {
        let from = FIRST_USER + 1 + rng.u64(..USERS);
        let to = FIRST_USER + 1 + (from - FIRST_USER + rng.u64(..USERS - 1)) % USERS;
        let op = MoneyOp::Transfer { from, to, amount: 1 + rng.u64(..2_000) };
        send(handle, journal, op, &format!("t-{cycle_tag}-{n}"));
    }
}

/// Journals the intent, sends the request (again while it is refused for backpressure) and
/// journals its outcome.
fn send(handle: &EngineHandle, journal: &mut JournalWriter, op: MoneyOp, request: &str) {
    journal.write(&Entry::MoneySent { op, request: request.to_string() });
    let outcome = loop {
        match request_once(handle, op, request) {
            Err(e) if e.is_retryable() => std::thread::sleep(Duration::from_micros(200)),
            Err(e) => {
                journal.write(&Entry::Failure(format!("{op:?} {request}: {e}")));
                eprintln!("stress child: {op:?} {request}: {e}");
                std::process::exit(3)
            }
            Ok(outcome) => break outcome,
        }
    };
    journal.write(&Entry::MoneyAcked { request: request.to_string(), outcome });
}

/// One attempt of a request, its outcome in the journal's terms. A transfer whose number
/// ends in an odd digit (half of them, and their retries) is made by a task on its payer's
/// executor, where it runs in place (`engine/src/local.rs`); the rest from this thread.
fn request_once(handle: &EngineHandle, op: MoneyOp, request: &str) -> tradeshard_engine::Result<Outcome> {
    let in_place = request.ends_with(['1', '3', '5', '7', '9']);
    let answer = match op {
        MoneyOp::Deposit { user, amount } => handle.deposit_blocking(user, CURRENCY, amount, request).map(drop),
        MoneyOp::Transfer { from, to, amount } if in_place => {
            let routing = handle.routing();
            let executor = routing.executor_of_physical(routing.physical_of_user(from));
            let (tx, rx) = std::sync::mpsc::channel();
            let (task_handle, request) = (handle.clone(), request.to_string());
            futures_lite::future::block_on(handle.spawn_on(executor, move || async move {
                let _ = tx.send(task_handle.transfer(from, to, CURRENCY, amount, &request).await.map(drop));
            }))?;
            // A task dropped unanswered: the engine is closing.
            rx.recv().unwrap_or(Err(Error::Closed))
        }
        MoneyOp::Transfer { from, to, amount } => {
            handle.transfer_blocking(from, to, CURRENCY, amount, request).map(drop)
        }
    };
    match answer {
        Ok(()) => Ok(Outcome::Done),
        Err(Error::Refused(Refusal::TransferCancelled { .. })) => Ok(Outcome::Cancelled),
        Err(Error::Refused(Refusal::InsufficientFunds { .. })) => Ok(Outcome::Refused),
        Err(e) => Err(e),
    }
}

/// What the checks of money covered.
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct MoneyChecked {
    /// Requests with a known outcome when the balances were checked.
    pub requests: u64,
    /// Requests whose answer a kill took, sent again.
    pub retried: u64,
    pub transfers_done: u64,
}

/// Every money request of a data directory and its outcome, once known.
#[derive(Default)]
pub struct MoneyModel {
    requests: BTreeMap<String, (MoneyOp, Option<Outcome>)>,
}

impl MoneyModel {
    pub fn sent(&mut self, op: MoneyOp, request: String) -> anyhow::Result<()> {
        if self.requests.insert(request.clone(), (op, None)).is_some() {
            bail!("the child sent money request {request} twice");
        }
        Ok(())
    }

    pub fn acked(&mut self, request: &str, outcome: Outcome) -> anyhow::Result<()> {
        let (_, known) = self.requests.get_mut(request).ok_or_else(|| anyhow!("ack of unsent {request}"))?;
        *known = Some(outcome);
        Ok(())
    }

    /// Sends the requests whose answers were lost again, then checks the balances.
    pub fn verify(&mut self, handle: &EngineHandle) -> anyhow::Result<MoneyChecked> {
        let mut checked = MoneyChecked::default();
        for (request, (op, outcome)) in self.requests.iter_mut().filter(|(_, (_, outcome))| outcome.is_none()) {
            checked.retried += 1;
            let answer = super::common::retrying(|| request_once(handle, *op, request));
            *outcome = Some(answer.map_err(|e| anyhow!("retried {request}: {e}"))?);
        }
        // The completions of activities are queued behind their answers: wait (bounded) until
        // none is in doubt.
        let started = Instant::now();
        while super::common::retrying(|| handle.stats_blocking())?
            .shards
            .iter()
            .any(|shard| shard.activities_in_doubt > 0)
        {
            if started.elapsed() > Duration::from_secs(30) {
                bail!("activities left in doubt after every lost request was sent again");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let mut balances: BTreeMap<u64, i128> = BTreeMap::new();
        let mut deposited = 0u128;
        for (op, outcome) in self.requests.values() {
            checked.requests += 1;
            match (op, outcome) {
                (MoneyOp::Deposit { user, amount }, Some(Outcome::Done)) => {
                    *balances.entry(*user).or_default() += i128::from(*amount);
                    deposited += u128::from(*amount);
                }
                (MoneyOp::Transfer { from, to, amount }, Some(Outcome::Done)) => {
                    *balances.entry(*from).or_default() -= i128::from(*amount);
                    *balances.entry(*to).or_default() += i128::from(*amount);
                    checked.transfers_done += 1;
                }
                (MoneyOp::Transfer { .. }, Some(Outcome::Cancelled | Outcome::Refused)) => {}
                (op, outcome) => bail!("money request {op:?} ended as {outcome:?}"),
            }
        }
        for user in FIRST_USER + 1..=FIRST_USER + USERS {
            let balance = super::common::retrying(|| handle.balance_blocking(user, CURRENCY))?;
            let wanted = balances.get(&user).copied().unwrap_or(0);
            if (balance.frozen, balance.incoming) != (0, 0) || i128::from(balance.available) != wanted {
                bail!("user {user} holds {balance:?}; the outcomes make {wanted}");
            }
        }
        let currency = Currency::parse(CURRENCY).expect("a known code");
        let totals = super::common::retrying(|| handle.account_totals_blocking())?.get(&currency).copied().unwrap_or(0);
        let in_transit: i128 = super::common::retrying(|| handle.money_in_transit_blocking())?.values().sum();
        if totals != deposited || in_transit != 0 {
            bail!("accounts hold {totals} and {in_transit} is in transit; {deposited} was deposited");
        }
        Ok(checked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tradeshard_engine::Engine;

    #[test]
    fn the_check_sends_lost_requests_again_and_catches_balances_the_outcomes_do_not_make() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(super::super::common::engine_options(dir.path())).unwrap();
        let handle = engine.handle();
        let (a, b) = (FIRST_USER + 1, FIRST_USER + 2);
        handle.deposit_blocking(a, CURRENCY, 100, "fund-a").unwrap();
        let mut model = MoneyModel::default();
        model.sent(MoneyOp::Deposit { user: a, amount: 100 }, "fund-a".into()).unwrap();
        model.acked("fund-a", Outcome::Done).unwrap();
        // Sent, its answer lost (here: it never reached the engine): the check sends it.
        model.sent(MoneyOp::Transfer { from: a, to: b, amount: 30 }, "t-1".into()).unwrap();
        let checked = model.verify(&handle).unwrap();
        assert_eq!((checked.retried, checked.transfers_done, checked.requests), (1, 1, 2));
        assert_eq!(handle.balance_blocking(b, CURRENCY).unwrap().available, 30);
        assert!(model.sent(MoneyOp::Deposit { user: b, amount: 1 }, "t-1".into()).is_err(), "one number, one request");

        // An acknowledged deposit the engine does not hold is caught.
        let mut wrong = MoneyModel::default();
        for (op, request) in [
            (MoneyOp::Deposit { user: a, amount: 100 }, "fund-a"),
            (MoneyOp::Transfer { from: a, to: b, amount: 30 }, "t-1"),
            (MoneyOp::Deposit { user: b, amount: 5 }, "never"),
        ] {
            wrong.sent(op, request.into()).unwrap();
            wrong.acked(request, Outcome::Done).unwrap();
        }
        let error = wrong.verify(&handle).unwrap_err().to_string();
        assert!(error.contains("the outcomes make 35"), "{error}");
        engine.close().unwrap();
    }
}
