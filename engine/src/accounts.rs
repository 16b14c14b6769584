//! Accounts through the engine: deposits and withdrawals under the caller's request numbers,
//! balances, and the totals a conservation check compares with what came in and went out.
//!
//! A user's accounts (one per currency) live in the user's shard, routed as the user's trades
//! are. Each request is one journal record there, durable before it is answered, and
//! idempotent on (user, request number) as refunds are on theirs.

use std::collections::BTreeMap;

use tradeshard_shard::{AccountCommand, AccountOp, AccountReceipt, Balance, Currency, InputError};

use crate::blocking::blocking;
use crate::error::Result;
use crate::handle::EngineHandle;
use crate::ops;

impl EngineHandle {
    async fn post(&self, command: AccountCommand) -> Result<AccountReceipt> {
        let routing = self.routing();
        let shard = routing.physical_of_user(command.user_id);
        self.on_shard(shard, ops::Post(command)).await
    }

    /// Credits `amount` (minor units) of `currency` to the user's available balance, durable
    /// when this resolves. `request_no` (1..=64 printable ASCII bytes, unique per user) makes
    /// it idempotent: a repeat answers the original receipt (`replayed: true`) and moves
    /// nothing; the same number for another operation or amount is
    /// `Refusal::AccountRequestConflict`. A balance may hold at most `BALANCE_MAX`.
    pub async fn deposit(&self, user_id: u64, currency: &str, amount: u64, request_no: &str) -> Result<AccountReceipt> {
        self.post(AccountCommand::new(AccountOp::Deposit, user_id, currency, amount, request_no)?).await
    }

    /// Debits `amount` of `currency` from the user's available balance, never below zero
    /// (`Refusal::InsufficientFunds`); idempotent on `request_no` as [`deposit`](Self::deposit).
    pub async fn withdraw(
        &self,
        user_id: u64,
        currency: &str,
        amount: u64,
        request_no: &str,
    ) -> Result<AccountReceipt> {
        self.post(AccountCommand::new(AccountOp::Withdraw, user_id, currency, amount, request_no)?).await
    }

    /// The user's durable balance in `currency` (zero for an account never used).
    pub async fn balance(&self, user_id: u64, currency: &str) -> Result<Balance> {
        if user_id == 0 {
            return Err(InputError::ZeroUserId.into());
        }
        let currency = Currency::parse(currency).ok_or_else(|| InputError::UnknownCurrency(currency.to_string()))?;
        let routing = self.routing();
        let shard = routing.physical_of_user(user_id);
        self.on_shard(shard, ops::GetBalance { user_id, currency }).await
    }

    /// Per currency, the sum of every account's available and frozen balance over all shards:
    /// durable deposits less durable withdrawals, which a conservation check compares with
    /// the requests acknowledged.
    pub async fn account_totals(&self) -> Result<BTreeMap<Currency, u128>> {
        let mut totals = BTreeMap::new();
        for executor_totals in self.on_every_executor(ops::AccountTotals).await? {
            for (currency, total) in executor_totals {
                *totals.entry(currency).or_insert(0) += total;
            }
        }
        Ok(totals)
    }

    blocking!(deposit_blocking = deposit(&self, user_id: u64, currency: &str, amount: u64, request_no: &str) -> Result<AccountReceipt>);
    blocking!(withdraw_blocking = withdraw(&self, user_id: u64, currency: &str, amount: u64, request_no: &str) -> Result<AccountReceipt>);
    blocking!(balance_blocking = balance(&self, user_id: u64, currency: &str) -> Result<Balance>);
    blocking!(account_totals_blocking = account_totals(&self) -> Result<BTreeMap<Currency, u128>>);
}
