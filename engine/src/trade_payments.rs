//! Trades paid from the buyer's balance: the engine's side of `shard/src/trade_money.rs`.
//!
//! Paying, refunding and settling such a trade are the trade's own writes, in the buyer's
//! shard: each one record that moves the trade and the money together. Settling credits the
//! merchant; when the merchant's accounts live in another shard, the Settled record begins an
//! activity already decided to commit, and the caller that settled carries it out (the
//! merchant's Credit branch tried and confirmed in its shard, then the activity completed)
//! before it is answered. If that cannot be done now, the credit stays in transit, listed
//! among the activities in doubt, and recovery carries it out.

use tradeshard_shard::{finish_activity, settlement_activity, ActivityState, Command, Move, Receipt, TradeId};

use crate::transfers::now_ms;

use crate::blocking::blocking;
use crate::error::Result;
use crate::handle::EngineHandle;
use crate::ops;

impl EngineHandle {
    /// `Created → Paid`, paid from the buyer's available balance in the trade's currency: the
    /// trade is paid and the buyer debited in one durable record, or neither
    /// (`Refusal::InsufficientFunds`). The money stays in the engine's hands (it counts in
    /// [`money_in_transit`](Self::money_in_transit)) until the trade settles, when the merchant
    /// is credited with what was not refunded; refunds go back to the buyer's balance.
    /// Repeating it on a trade it paid answers the original receipt (`replayed: true`); on a
    /// trade paid otherwise (`pay`) it is refused (`IllegalTransition`), as `pay` is on a trade
    /// it paid.
    pub async fn pay_from_balance(&self, id: TradeId) -> Result<Receipt> {
        let shard = self.routing().physical_of_trade(id)?;
        self.on_shard(shard, ops::Write(Command::Move { id, to: Move::PayFromBalance })).await
    }

    /// Carries out the credit of a settled trade paid from a balance whose merchant's accounts
    /// live in another shard (nothing to do when they live in the trade's shard: the Settled
    /// record credited them). A credit that cannot be made now is left to recovery.
    pub(crate) async fn credit_settlement(&self, settled: &Receipt) -> Result<()> {
        let home = self.routing().physical_of_trade(settled.id)?;
        // The trade is in the cache once its settle is answered: a hit, on this thread.
        let merchant = self.get(settled.id).await?.merchant_id;
        if self.routing().physical_of_user(merchant) == home {
            return Ok(());
        }
        let activity = settlement_activity(settled.id);
        let Some(entry) = self.on_shard(home, ops::HeldActivity(activity)).await? else {
            return Ok(());
        };
        if matches!(entry.state, ActivityState::Decided(_)) {
            // Decided at its begin: its branch tried and confirmed together, then completed.
            finish_activity(self, home, activity, &entry, now_ms()).await?;
        }
        Ok(())
    }

    blocking!(pay_from_balance_blocking = pay_from_balance(&self, id: TradeId) -> Result<Receipt>);
}
