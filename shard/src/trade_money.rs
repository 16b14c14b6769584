//! The money a trade paid from a balance moves, and the one rule of it ([`apply_funding`]),
//! run by the write path on a scratch view (durable balances and the writes in flight) before a
//! record is written, and by the committer and replay on the durable books, so that a record
//! the write path accepted always applies.
//!
//! Paying from a balance takes the amount out of the buyer's available balance into the
//! engine's hands (the money in transit, `TccBook::in_transit`), in the buyer's shard, the
//! trade's own: one record, so the trade is paid and the buyer debited together or not at all.
//! A refund gives its amount back to the buyer's available balance. Settling credits the
//! merchant with what was not refunded: in the same record when the merchant's accounts live
//! in this shard, else through an activity the Settled record begins already decided (commit),
//! with one Credit branch in the merchant's shard that the activity manager tries and confirms
//! (`tcc_driver.rs`), recovery carrying it out if the engine stops before. Until the credit
//! is confirmed, the money is in transit; balances plus money in transit stay equal to
//! deposits less withdrawals at every instant.

use crate::accounts::{AccountKey, BALANCE_MAX};
use crate::error::Refusal;
use crate::keys::settlement_activity;
use crate::record::{Funding, RecordKind, TradeRecord};
use crate::tcc::{BranchAction, BranchPlan, BranchPlans, Decision};
use crate::tcc_book::{ActivityEntry, ActivityState, DECIDED_AT_BEGIN};
use crate::tcc_rules::MoneyView;
use crate::trade::TradeId;

/// Applies the money `record` moves to `view`, in shard `home`; a refusal changes nothing.
pub(crate) fn apply_funding(view: &mut impl MoneyView, record: &TradeRecord, home: u32) -> Result<(), Refusal> {
    let currency = record.currency;
    match (record.funding, record.kind) {
        (Funding::External, _) => Ok(()),
        (Funding::Balance, RecordKind::Paid) => {
            let (key, amount) = (AccountKey { user_id: record.user_id, currency }, record.amount);
            let mut balance = view.balance(key);
            if balance.available < amount {
                let (user_id, available) = (record.user_id, balance.available);
                return Err(Refusal::InsufficientFunds { user_id, currency, available, requested: amount });
            }
            balance.available -= amount;
            view.set_balance(key, balance);
            view.add_in_transit(currency, i128::from(amount));
            Ok(())
        }
        (Funding::Balance, RecordKind::Refunded) => pay_out(view, record.user_id, record, record.amount),
        (Funding::Settles { merchant_shard, credit }, RecordKind::Settled) if u32::from(merchant_shard) == home => {
            pay_out(view, record.merchant_id, record, credit)
        }
        (Funding::Settles { merchant_shard, credit }, RecordKind::Settled) => {
            let activity = settlement_activity(record.trade_id);
            if view.activity(activity).is_some() {
                return Err(Refusal::StepConflict { activity, reason: "a trade's settlement credited twice" });
            }
            let action = BranchAction::Credit { user_id: record.merchant_id, currency, amount: credit };
            let entry = ActivityEntry {
                branches: BranchPlans::from(&[BranchPlan { shard: u32::from(merchant_shard), branch: 0, action }][..]),
                deadline_ms: DECIDED_AT_BEGIN,
                begun_ms: record.at_ms,
                state: ActivityState::Decided(Decision::Commit),
                first_state: None,
            };
            view.set_activity(activity, entry);
            Ok(())
        }
        (Funding::Balance | Funding::Settles { .. }, _) => {
            unreachable!("the decoder and the write path pair funding only with the kinds that move money")
        }
    }
}

/// Pays `amount` out of the engine's hands into `user_id`'s available balance, within the
/// balance limit.
fn pay_out(view: &mut impl MoneyView, user_id: u64, record: &TradeRecord, amount: u64) -> Result<(), Refusal> {
    let key = AccountKey { user_id, currency: record.currency };
    let mut balance = view.balance(key);
    if balance.held().checked_add(amount).is_none_or(|held| held > BALANCE_MAX) {
        let (currency, holds) = (record.currency, balance.held());
        return Err(Refusal::BalanceLimit { user_id, currency, balance: holds, amount, max: BALANCE_MAX });
    }
    balance.available += amount;
    view.set_balance(key, balance);
    view.add_in_transit(record.currency, -i128::from(amount));
    Ok(())
}

/// The settlement activity that a record of trade `id` with `funding` begins in shard `home`:
/// a Settled record crediting a merchant of another shard begins one; no other record does.
pub(crate) fn settlement_begun(funding: Funding, id: TradeId, home: u32) -> Option<u128> {
    match funding {
        Funding::Settles { merchant_shard, .. } if u32::from(merchant_shard) != home => Some(settlement_activity(id)),
        _ => None,
    }
}
