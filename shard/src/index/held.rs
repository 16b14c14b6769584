//! What the index holds in memory because of the work since the last checkpoint, estimated in
//! bytes: the memory a checkpoint gives back, and what `Upkeep::checkpoint_memory_bytes`
//! bounds (`checkpointer.rs`).
//!
//! Everything a checkpoint moves out of memory is counted: the order keys, users' lists, refunds
//! and confirmed claims applied since the last one, the account requests, and the branches and
//! activities (the ended ones go to runs). So are the entries of the trades created since, which
//! stay in memory on top of the trades' own budget until a checkpoint writes them, and the cold
//! trades brought back to be changed. Each entry counts at its size; the hash tables' slack is not
//! counted (it can add as much again), nor the room the maps keep for the next interval once a
//! checkpoint forgot their entries (`layered.rs`: about an interval's tables, given back when
//! the shard is idle), nor what stays after a checkpoint (pending claims, branches
//! and activities under way): the checkpointer takes off what its snapshot held less what it
//! moved out, and an open what the checkpoint it loaded left. The work applied after the
//! snapshot counts towards the next checkpoint, and the snapshot's own keys leave memory only
//! as the checkpoint forgets them: so what a shard holds peaks near the budget plus one
//! checkpoint's duration of work, not at the budget.

use crate::retention::TRADE_ENTRY_BYTES;
use crate::trade::TradeId;

use super::ShardIndex;

impl ShardIndex {
    /// Estimated bytes held in memory for the work since the last checkpoint (see the module's
    /// text).
    pub(crate) fn held_bytes(&self) -> u64 {
        // One order key per trade created since the last checkpoint's run, and one id in its
        // user's list.
        let created = self.by_order.len() as u64;
        let new_trades = created * (TRADE_ENTRY_BYTES + std::mem::size_of::<TradeId>() as u64);
        // Cold trades brought back to be changed stay until a checkpoint writes them (a key and
        // a control byte each in the map that holds them).
        let thawed = self.trades.thawed_len() as u64 * (TRADE_ENTRY_BYTES + 9);
        self.by_order.entry_bytes()
            + self.by_user.entry_bytes()
            + new_trades
            + thawed
            + self.refunds.entry_bytes()
            + self.claims.entry_bytes()
            + self.accounts.request_bytes()
            + self.tcc.entry_bytes()
    }
}
