//! Transfers between any two users, and the engine's side of flexible transactions: the
//! activity manager's protocol (`tradeshard_shard::run_activity`) carried between executors.
//!
//! Both users in one shard: one journal record moves the money (a local transaction). In
//! two shards: a TCC activity recorded in the payer's shard, with two branches, a Freeze of the
//! payer's money and a Credit of the payee, whose id is the payer's request key, so that a
//! retry of the transfer finds it. A transfer answers once the decision is durable and every
//! branch answered it; if a branch could not be reached the decision stands and recovery
//! (`activities.rs`) finishes it.

use std::collections::BTreeMap;

use tradeshard_shard::{
    account_request_key, finish_activity, run_activity, AccountCommand, AccountOp, ActivityState, BranchAction,
    BranchPlan, Currency, Decision, Refusal, Step, StepAnswer, StepError, StepSender,
};

use crate::blocking::blocking;
use crate::error::{Error, Result};
use crate::handle::EngineHandle;
use crate::ops;

/// What a durable transfer answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TransferReceipt {
    /// The transfer's id: the payer's request key (the id of its activity across shards).
    pub activity: u128,
    pub from_user: u64,
    pub to_user: u64,
    pub currency: Currency,
    pub amount: u64,
    /// Both accounts were in one shard: one journal record moved the money, no activity.
    pub local: bool,
    /// The request number was used already: this is the original's answer and nothing more
    /// moved.
    pub replayed: bool,
}

impl StepError for Error {
    fn refusal(&self) -> Option<&Refusal> {
        match self {
            Error::Refused(refusal) => Some(refusal),
            _ => None,
        }
    }
}

impl StepSender for EngineHandle {
    type Error = Error;
    async fn send(&self, shard: u32, steps: Vec<Step>) -> Result<Vec<StepAnswer>> {
        // Steps wait for room in a full queue whatever the caller chose: refused in between,
        // an activity would wait for recovery.
        self.on_shard_waiting(shard, ops::Transact(steps)).await
    }
}

impl EngineHandle {
    fn shard_of_user(&self, user_id: u64) -> u32 {
        let routing = self.routing();
        routing.physical_of_logical(routing.logical_of_user(user_id))
    }

    /// Moves `amount` of `currency` from `from_user`'s available balance to `to_user`'s,
    /// never below zero (`Refusal::InsufficientFunds`, nothing moved). Idempotent on
    /// (`from_user`, `request_no`): a repeat answers the original (`replayed: true`), or for a
    /// transfer that was cancelled, `Refusal::TransferCancelled` again. Users in two shards
    /// make a TCC activity (module text); money is conserved at every instant, counting what
    /// is in the hands of activities ([`money_in_transit`](Self::money_in_transit)).
    pub async fn transfer(
        &self,
        from_user: u64,
        to_user: u64,
        currency: &str,
        amount: u64,
        request_no: &str,
    ) -> Result<TransferReceipt> {
        let command = AccountCommand::new(AccountOp::Transfer { to_user }, from_user, currency, amount, request_no)?;
        let (home, payee_shard) = (self.shard_of_user(from_user), self.shard_of_user(to_user));
        let activity = account_request_key(from_user, request_no);
        let receipt = |local, replayed| TransferReceipt {
            activity,
            from_user,
            to_user,
            currency: command.currency,
            amount,
            local,
            replayed,
        };
        if home == payee_shard {
            let answer = self.on_shard(home, ops::Post(command.clone())).await?;
            return Ok(receipt(true, answer.replayed));
        }
        let currency = command.currency;
        let branches = vec![
            BranchPlan {
                shard: home,
                branch: 0,
                action: BranchAction::Freeze { user_id: from_user, currency, amount },
            },
            BranchPlan {
                shard: payee_shard,
                branch: 1,
                action: BranchAction::Credit { user_id: to_user, currency, amount },
            },
        ];
        // A retry finds its activity begun (the Begin answers a repeat), or refused (its
        // branch was cancelled): then it is driven to its end from its record.
        let deadline_ms = now_ms() + self.inner.activity_timeout.as_millis() as u64;
        let (decision, replayed) = match run_activity(self, home, activity, deadline_ms, branches.clone()).await {
            Ok(driven) => (driven.decision, driven.begun_before),
            Err(error) => match self.on_shard(home, ops::GetActivity(activity)).await? {
                Some(entry) if error.refusal().is_some() && entry.branches == branches => {
                    (self.finish_existing(home, activity, &entry).await?, true)
                }
                _ => return Err(error),
            },
        };
        match decision {
            Decision::Commit => Ok(receipt(false, replayed)),
            Decision::Cancel(reason) => Err(Refusal::TransferCancelled { activity, reason }.into()),
        }
    }

    /// The decision of an activity already recorded, driving it to its end first if it is
    /// still under way (its first attempt stopped, or runs at the same time).
    async fn finish_existing(
        &self,
        home: u32,
        activity: u128,
        entry: &tradeshard_shard::ActivityEntry,
    ) -> Result<Decision> {
        if let ActivityState::Completed(decision) = entry.state {
            return Ok(decision);
        }
        // An undecided one is cancelled now: its first attempt's caller has this answer.
        let mut entry = entry.clone();
        if entry.state == ActivityState::Open {
            entry.deadline_ms = 0;
        }
        let driven = finish_activity(self, home, activity, &entry, now_ms()).await?;
        let reason = "an activity past its deadline was left undecided";
        driven.map(|driven| driven.decision).ok_or_else(|| Refusal::StepConflict { activity, reason }.into())
    }

    /// Per currency, money confirmed out of payers and not yet into payees: inside open
    /// activities. Balances plus this equal deposits less withdrawals at every instant.
    pub async fn money_in_transit(&self) -> Result<BTreeMap<Currency, i128>> {
        let mut totals = BTreeMap::new();
        for executor_totals in self.on_every_executor(ops::InTransit).await? {
            for (currency, amount) in executor_totals {
                *totals.entry(currency).or_insert(0) += amount;
            }
        }
        Ok(totals)
    }

    /// Every activity not completed, with the physical shard that initiated it: the
    /// activities in doubt, which recovery drives to their end.
    pub async fn activities_in_doubt(&self) -> Result<Vec<(u32, u128, tradeshard_shard::ActivityEntry)>> {
        Ok(self.on_every_executor(ops::UnfinishedActivities).await?.into_iter().flatten().collect())
    }

    blocking!(activities_in_doubt_blocking = activities_in_doubt(&self) -> Result<Vec<(u32, u128, tradeshard_shard::ActivityEntry)>>);
    blocking!(transfer_blocking = transfer(&self, from_user: u64, to_user: u64, currency: &str, amount: u64, request_no: &str) -> Result<TransferReceipt>);
    blocking!(money_in_transit_blocking = money_in_transit(&self) -> Result<BTreeMap<Currency, i128>>);
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}
