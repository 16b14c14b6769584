//! The layers of the maps of recent work through a checkpoint (`layered.rs`): frozen for the
//! snapshot, settled part by part once the checkpoint is durable, moved down after a failed
//! one, and the room kept for the next interval given back when the shard is idle. One list of
//! the maps, in every step alike: the order keys, the users' lists, the claims, the refunds, the
//! account requests and the books of transactions.

use super::user_trades::UserTrades;
use super::ShardIndex;

impl ShardIndex {
    /// Freezes the maps of recent work that a checkpoint's snapshot would otherwise copy part
    /// by part while it lives (`layered.rs`): the order keys, the users' lists, the claims, the
    /// refunds, the account requests and the books of transactions.
    pub(crate) fn freeze_for_snapshot(&mut self) {
        self.by_order.freeze();
        self.by_user.freeze();
        self.claims.freeze();
        self.refunds.freeze();
        self.accounts.freeze_requests();
        self.tcc.freeze();
    }

    /// Once the checkpoint of the last freeze is durable (its runs hold what was frozen, but for
    /// what is under way): drops part `part` of what was frozen, keeping only the pending claims
    /// (`layered.rs`; the books of transactions freeze only their ended entries, those under
    /// way being in maps of their own); returns the entries the part held.
    pub(crate) fn settle_frozen_part(&mut self, part: usize) -> usize {
        // A user's list carried up since the snapshot still begins with the ids the run holds.
        let trim_user = |frozen: &UserTrades, live: &mut UserTrades| {
            live.forget_oldest(frozen.as_slice().len());
            !live.is_empty()
        };
        self.by_order.settle_part(part, |_| false)
            + self.by_user.settle_part_with(part, |_| false, trim_user)
            + self.claims.settle_part(part, |claim| claim.trade.is_none())
            + self.refunds.settle_part(part, |_| false)
            + self.accounts.settle_requests_part(part)
            + self.tcc.settle_part(part)
    }

    /// Gives back the room the maps of recent work keep for the next interval
    /// (`LayeredMap::release_room`): a shard with nothing applied since its last checkpoint.
    pub(crate) fn release_room(&mut self) {
        self.by_order.release_room();
        self.by_user.release_room();
        self.claims.release_room();
        self.refunds.release_room();
        self.accounts.release_requests_room();
        self.tcc.release_room();
    }

    /// Part `part` of every live layer moved down after a failed checkpoint (`layered.rs`).
    pub(crate) fn fold_live_part(&mut self, part: usize) {
        self.by_order.fold_live_part(part);
        self.by_user.fold_live_part(part);
        self.claims.fold_live_part(part);
        self.refunds.fold_live_part(part);
        self.accounts.fold_live_requests_part(part);
        self.tcc.fold_live_part(part);
    }

    /// Whether frozen entries wait for [`settle_frozen_part`](Self::settle_frozen_part).
    pub(crate) fn has_frozen(&self) -> bool {
        self.by_order.has_frozen()
            || self.by_user.has_frozen()
            || self.claims.has_frozen()
            || self.refunds.has_frozen()
            || self.accounts.has_frozen_requests()
            || self.tcc.has_frozen()
    }
}
