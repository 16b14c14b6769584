//! Many transfers in one call, for callers that move money in bulk (a clearing run, a payroll):
//! the transfers between users of one shard go to it as one job, one hand-off and one answer
//! for all of them, and become durable in the same group commits; those across shards run as
//! activities driven together (`tradeshard_shard::run_activities`): each step of the protocol
//! is one hand-off to each shard for the whole batch.
//!
//! The batch is no transaction. Each transfer is its own request, idempotent on its payer's
//! request number exactly as one [`EngineHandle::transfer`] is, and answers on its own: a
//! refusal of one leaves the others as they were, and a caller that lost the answer sends the
//! whole batch again and gets each transfer's original result.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::task::Poll;

use tradeshard_shard::{
    account_request_key, run_activities, AccountCommand, AccountOp, BatchDriven, Decision, InputError, PlannedActivity,
    Refusal,
};

use crate::error::{Error, Result};
use crate::handle::EngineHandle;
use crate::ops;
use crate::transfers::{now_ms, transfer_branches, TransferReceipt};

/// The most transfers one [`EngineHandle::transfer_many`] takes: an executor posts a batch's
/// transfers in one turn, and a bound keeps that turn, and the answer, of bounded size.
pub const TRANSFERS_PER_CALL_MAX: usize = 8_192;

/// Transfers across shards of one batch that the batch left aside (module text), under way at
/// once: each is an activity driven from the caller's thread, and a bound keeps what one
/// batch holds of the executors' queues.
const ACTIVITIES_AT_ONCE: usize = 64;

/// One transfer of a batch: what [`EngineHandle::transfer`] takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransferRequest<'a> {
    pub from_user: u64,
    pub to_user: u64,
    pub currency: &'a str,
    /// Minor units.
    pub amount: u64,
    /// Unique per payer: a repeat answers the original.
    pub request_no: &'a str,
}

type Answer = Result<TransferReceipt>;

impl EngineHandle {
    /// Moves money between any users, many transfers at once: one answer per transfer, in the
    /// order given, each what [`transfer`](Self::transfer) would have answered for it (module
    /// text). An empty batch answers nothing; one of more than [`TRANSFERS_PER_CALL_MAX`] is
    /// refused whole (`InputError::BadBatch`), before anything is sent.
    pub async fn transfer_many(&self, transfers: &[TransferRequest<'_>]) -> Result<Vec<Answer>> {
        if transfers.len() > TRANSFERS_PER_CALL_MAX {
            return Err(InputError::BadBatch { count: transfers.len(), max: TRANSFERS_PER_CALL_MAX }.into());
        }
        let routing = self.routing();
        let mut answers: Vec<Option<Answer>> = vec![None; transfers.len()];
        let mut local: BTreeMap<u32, (Vec<usize>, Vec<AccountCommand>)> = BTreeMap::new();
        let mut across = Vec::new();
        for (slot, transfer) in transfers.iter().enumerate() {
            let op = AccountOp::Transfer { to_user: transfer.to_user };
            let command =
                AccountCommand::new(op, transfer.from_user, transfer.currency, transfer.amount, transfer.request_no);
            let command = match command {
                Ok(command) => command,
                Err(error) => {
                    answers[slot] = Some(Err(error.into()));
                    continue;
                }
            };
            let home = routing.physical_of_user(transfer.from_user);
            if home == routing.physical_of_user(transfer.to_user) {
                let (slots, commands) = local.entry(home).or_default();
                slots.push(slot);
                commands.push(command);
            } else {
                across.push((slot, home, command));
            }
        }
        // The local transfers are under way while the activities run.
        let mut waiting = Vec::new();
        for (shard, (slots, commands)) in local {
            match self.submit_to_shard(shard, ops::PostMany(commands)).await {
                Ok(answer) => waiting.push((slots, answer)),
                Err(error) => slots.into_iter().for_each(|slot| answers[slot] = Some(Err(error.clone()))),
            }
        }
        self.transfer_across(transfers, &across, &mut answers).await;
        for (slots, answer) in waiting {
            let posted = match answer.await {
                Some(Ok(posted)) => posted,
                failed => {
                    let error = failed.map_or(Error::Closed, |refused| Error::from(refused.unwrap_err()));
                    slots.into_iter().for_each(|slot| answers[slot] = Some(Err(error.clone())));
                    continue;
                }
            };
            for (slot, posted) in slots.into_iter().zip(posted) {
                let t = transfers[slot];
                answers[slot] = Some(posted.map_err(Error::from).map(|receipt| TransferReceipt {
                    activity: account_request_key(t.from_user, t.request_no),
                    from_user: t.from_user,
                    to_user: t.to_user,
                    currency: receipt.currency,
                    amount: t.amount,
                    local: true,
                    replayed: receipt.replayed,
                }));
            }
        }
        Ok(answers.into_iter().map(|answer| answer.expect("every transfer answered")).collect())
    }

    /// The transfers of a batch across shards: run together as activities
    /// ([`run_activities`]), with those the batch left aside run one by one as
    /// [`transfer`](Self::transfer) runs them, a bounded number at a time.
    async fn transfer_across(
        &self,
        transfers: &[TransferRequest<'_>],
        across: &[(usize, u32, AccountCommand)],
        answers: &mut [Option<Answer>],
    ) {
        let deadline_ms = now_ms() + self.inner.activity_timeout.as_millis() as u64;
        let planned: Vec<PlannedActivity> = across
            .iter()
            .map(|&(slot, home, ref command)| {
                let t = transfers[slot];
                let payee_shard = self.routing().physical_of_user(t.to_user);
                let activity = account_request_key(t.from_user, t.request_no);
                PlannedActivity {
                    home,
                    activity,
                    deadline_ms,
                    branches: transfer_branches(home, payee_shard, command, t.to_user),
                }
            })
            .collect();
        let mut alone = Vec::new();
        let driving = self.inner.driving.guard(planned.iter().map(|plan| plan.activity));
        let driven_together = run_activities(self, &planned).await;
        drop(driving);
        for ((&(slot, _, ref command), plan), driven) in across.iter().zip(&planned).zip(driven_together) {
            let t = transfers[slot];
            answers[slot] = Some(match driven {
                BatchDriven::Driven(driven) => match driven.decision {
                    Decision::Commit => Ok(TransferReceipt {
                        activity: plan.activity,
                        from_user: t.from_user,
                        to_user: t.to_user,
                        currency: command.currency,
                        amount: t.amount,
                        local: false,
                        replayed: false,
                    }),
                    Decision::Cancel(reason) => {
                        Err(Refusal::TransferCancelled { activity: plan.activity, reason }.into())
                    }
                },
                BatchDriven::Refused(refusal) => Err(refusal.into()),
                BatchDriven::Alone { begun } => {
                    alone.push((slot, begun));
                    continue;
                }
            });
        }
        let activities = alone.iter().map(|&(slot, _)| {
            let t = transfers[slot];
            self.transfer(t.from_user, t.to_user, t.currency, t.amount, t.request_no)
        });
        for (&(slot, begun), answer) in alone.iter().zip(at_most_at_once(activities, ACTIVITIES_AT_ONCE).await) {
            // Begun by the batch, the activity is this request's own, not a repeat's.
            answers[slot] =
                Some(answer.map(|receipt| TransferReceipt { replayed: receipt.replayed && !begun, ..receipt }));
        }
    }

    crate::blocking::blocking!(transfer_many_blocking = transfer_many(&self, transfers: &[TransferRequest<'_>]) -> Result<Vec<Answer>>);
}

/// Runs `futures`, at most `limit` of them at once, and gathers their outputs in order. Every
/// wake polls the ones under way, so `limit` also bounds the work of a wake.
async fn at_most_at_once<F: Future>(futures: impl Iterator<Item = F>, limit: usize) -> Vec<F::Output> {
    let mut pending = futures.enumerate();
    let mut running: Vec<(usize, Pin<Box<F>>)> = Vec::with_capacity(limit);
    let mut outputs: Vec<Option<F::Output>> = Vec::new();
    std::future::poll_fn(|cx| loop {
        while running.len() < limit {
            let Some((at, future)) = pending.next() else { break };
            outputs.push(None);
            running.push((at, Box::pin(future)));
        }
        if running.is_empty() {
            return Poll::Ready(());
        }
        let before = running.len();
        running.retain_mut(|(at, future)| match future.as_mut().poll(cx) {
            Poll::Ready(output) => {
                outputs[*at] = Some(output);
                false
            }
            Poll::Pending => true,
        });
        // Some ended: start as many more and poll again; none ended: a wake comes.
        if running.len() == before {
            return Poll::Pending;
        }
    })
    .await;
    outputs.into_iter().map(|output| output.expect("every future ran to its end")).collect()
}
