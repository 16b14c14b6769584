//! What the transfer workload's tasks send: the funding before the timed phase, then each
//! task's loop of transfers, batches of transfers or purchases, the draw of payer and payee,
//! and how each answer is counted.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use fastrand::Rng;
use hdrhistogram::Histogram;
use tradeshard_engine::{EngineHandle, Error, NewTrade, Refusal, TransferRequest};

use super::super::client::send_slot;
use super::super::request_numbers::RequestNumbers;
use super::{Phase, Transfers, CURRENCY, FUNDING};
use crate::latency;

/// Deposits `FUNDING` to every user, `inflight` at a time (untimed).
pub(super) async fn fund(handle: &EngineHandle, users: u64, inflight: usize, run: &str) -> anyhow::Result<()> {
    let next = Rc::new(Cell::new(1u64));
    let tasks: Vec<_> = (0..inflight.min(users as usize))
        .map(|_| {
            let (handle, next, request_no) = (handle.clone(), next.clone(), format!("fund-{run}"));
            glommio::spawn_local(async move {
                loop {
                    let user = next.get();
                    if user > users {
                        return Ok(());
                    }
                    next.set(user + 1);
                    handle.deposit(user, CURRENCY, FUNDING, &request_no).await?;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.map_err(|error: Error| anyhow::anyhow!("funding: {error}"))?;
    }
    Ok(())
}

pub(super) async fn worker(state: Rc<Transfers>, task: usize, seed: u64) {
    let mut rng = Rng::with_seed(seed);
    let mut numbers = RequestNumbers::new(&state.phase.run, task);
    let mut n = 0u64;
    while !state.stop.get() && !state.phase.halted.load(Ordering::Relaxed) {
        if state.phase.deadline.is_some_and(|deadline| Instant::now() >= deadline)
            || state.ops_max.is_some_and(|max| state.issued.get() >= max)
        {
            state.stop.set(true);
            return;
        }
        if state.phase.batch > 1 {
            if !send_batch(&state, &mut rng, &numbers, task, &mut n).await {
                // This task's next slot is past the deadline; the others end at theirs.
                return;
            }
            continue;
        }
        state.issued.set(state.issued.get() + 1);
        let Some((from, to, cross)) = choose_pair(&state, &mut rng) else {
            // A draw that found no pair sends nothing, so nothing waits: yield now and then, or
            // the loop holds the thread (with --on-executors, the engine's executor).
            glommio::yield_if_needed().await;
            continue;
        };
        let request_no = numbers.name(n);
        let Some(started) =
            send_slot(state.phase.rate, state.phase.start, state.phase.inflight, task, n, state.phase.deadline).await
        else {
            // This task's next slot is past the deadline; the others end at theirs.
            return;
        };
        n += 1;
        let purchase = rng.f64() < state.phase.purchase_ratio;
        let answer = match purchase {
            true => buy(&state.phase.handle, from, to, 1 + rng.u64(..100), request_no.to_string()).await,
            false => state.phase.handle.transfer(from, to, CURRENCY, 1 + rng.u64(..100), request_no).await.map(drop),
        };
        let histogram = match (purchase, cross) {
            (true, _) => &state.purchases,
            (false, true) => &state.across,
            (false, false) => &state.local,
        };
        count_answer(&state, answer, histogram, started);
    }
}

/// A payer (of this part's executor with `--on-executors`) and a payee (of another shard by
/// --cross-shard-ratio), and whether they are in two shards; `None` for a draw that found none.
fn choose_pair(state: &Transfers, rng: &mut Rng) -> Option<(u64, u64, bool)> {
    let phase = &state.phase;
    let routing = phase.handle.routing();
    let from = match state.payers_on {
        None => 1 + rng.u64(..phase.users),
        Some(executor) => draw_user(phase, rng, |shard| routing.executor_of_physical(shard as u32) == executor)?,
    };
    let home = routing.physical_of_user(from) as usize;
    let cross = rng.f64() < phase.cross_ratio;
    let shard = match cross {
        true => (home + 1 + rng.usize(..phase.by_shard.len() - 1)) % phase.by_shard.len(),
        false => home,
    };
    let to = draw_user(phase, rng, |of| of == shard)?;
    (to != from).then_some((from, to, cross))
}

/// A user of a shard that `wanted` accepts, uniform over those shards' users: drawn until one
/// lives in one (as uniform as the table, without a read of it: a random read of a table of
/// every user misses the caches the engine's threads fill, a stall per transfer); the table
/// after a few draws, for few users or many shards.
fn draw_user(phase: &Phase, rng: &mut Rng, wanted: impl Fn(usize) -> bool) -> Option<u64> {
    let routing = phase.handle.routing();
    let drawn = (0..4 * phase.by_shard.len())
        .map(|_| 1 + rng.u64(..phase.users))
        .find(|user| wanted(routing.physical_of_user(*user) as usize));
    if drawn.is_some() {
        return drawn;
    }
    let shards: Vec<usize> = (0..phase.by_shard.len()).filter(|shard| wanted(*shard)).collect();
    let held: usize = shards.iter().map(|shard| phase.by_shard[*shard].len()).sum();
    let mut nth = rng.usize(..held.max(1));
    for shard in shards {
        let users = &phase.by_shard[shard];
        if nth < users.len() {
            return Some(users[nth]);
        }
        nth -= users.len();
    }
    None
}

/// One batch of `--batch` transfers through `transfer_many`; each answer is counted as a
/// transfer alone would be, its latency the batch's. False when the task's next slot lies
/// past the deadline (nothing sent).
async fn send_batch(state: &Transfers, rng: &mut Rng, numbers: &RequestNumbers, task: usize, n: &mut u64) -> bool {
    let mut chosen = Vec::with_capacity(state.phase.batch);
    // Every request number of the batch, one after another in one buffer.
    let mut names = String::with_capacity(state.phase.batch * 32);
    // Draws are bounded, as one at a time they end at the deadline: users so few that most
    // draws find no payee make smaller batches, or none.
    for _ in 0..state.phase.batch * 8 {
        if chosen.len() == state.phase.batch {
            break;
        }
        if let Some((from, to, cross)) = choose_pair(state, rng) {
            let start = names.len();
            numbers.append_batch_name(&mut names, *n, chosen.len() as u64);
            chosen.push((from, to, cross, 1 + rng.u64(..100), start..names.len()));
        }
    }
    state.issued.set(state.issued.get() + state.phase.batch as u64);
    if chosen.is_empty() {
        glommio::yield_if_needed().await;
        return true;
    }
    let requests: Vec<TransferRequest> = chosen
        .iter()
        .map(|(from, to, _, amount, name)| TransferRequest {
            from_user: *from,
            to_user: *to,
            currency: CURRENCY,
            amount: *amount,
            request_no: &names[name.clone()],
        })
        .collect();
    // A batch is `batch` operations of the open loop's rate.
    let rate = state.phase.rate.map(|rate| rate / state.phase.batch as f64);
    let Some(started) = send_slot(rate, state.phase.start, state.phase.inflight, task, *n, state.phase.deadline).await
    else {
        return false;
    };
    *n += 1;
    match state.phase.handle.transfer_many(&requests).await {
        Ok(answers) => {
            for ((_, _, cross, _, _), answer) in chosen.iter().zip(answers) {
                let histogram = if *cross { &state.across } else { &state.local };
                count_answer(state, answer.map(drop), histogram, started);
            }
        }
        Err(error) => count_answer(state, Err(error), &state.local, started),
    }
    true
}

/// Counts one answer: its latency from `started` if it moved money, else why not; an error
/// stops the run.
fn count_answer(state: &Transfers, answer: Result<(), Error>, histogram: &RefCell<Histogram<u64>>, started: Instant) {
    match answer {
        Ok(()) => {
            let micros = started.elapsed().as_micros() as u64;
            latency::record(&mut histogram.borrow_mut(), micros);
            latency::record(&mut state.interval.borrow_mut(), micros);
        }
        Err(Error::Refused(Refusal::TransferCancelled { .. })) => {
            state.cancelled.set(state.cancelled.get() + 1);
            unmoved(state, started);
        }
        Err(Error::Refused(Refusal::InsufficientFunds { .. })) => {
            state.refused.set(state.refused.get() + 1);
            unmoved(state, started);
        }
        Err(error) => {
            state.errors.set(state.errors.get() + 1);
            state.first_error.borrow_mut().get_or_insert(error.to_string());
            state.stop.set(true);
            state.phase.halted.store(true, Ordering::Relaxed);
        }
    }
}

/// Records the latency of a transfer answered without moving money.
fn unmoved(state: &Transfers, started: Instant) {
    let micros = started.elapsed().as_micros() as u64;
    latency::record(&mut state.unmoved.borrow_mut(), micros);
    latency::record(&mut state.interval.borrow_mut(), micros);
}

/// A purchase: a trade of `buyer` to `merchant`, created under order number `order_no`, paid
/// from the buyer's balance and settled (the merchant credited).
async fn buy(handle: &EngineHandle, buyer: u64, merchant: u64, amount: u64, order_no: String) -> Result<(), Error> {
    let trade = NewTrade {
        buyer_id: buyer,
        merchant_id: merchant,
        merchant_order_no: order_no,
        amount,
        currency: CURRENCY.into(),
        memo: String::new(),
    };
    let id = handle.create_trade(trade).await?.id;
    handle.pay_from_balance(id).await?;
    handle.settle(id).await.map(drop)
}
