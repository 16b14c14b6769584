//! Where a request goes: user → logical shard → physical shard → executor.
//!
//! `xxh3_64(user id) % logical_shards` picks the logical shard, fixed forever for the user;
//! logical shards map onto physical shards by `logical % physical` (fixed at creation), and
//! physical shards onto executors by `physical % executors` (chosen at each open), so a
//! directory made on 16 cores opens on 2. A trade id carries its logical shard, so it routes
//! the same way without its user. A merchant order number has a home shard of its own, by the
//! hash of (merchant, order number), where it is claimed (`orders.rs`).

use tradeshard_shard::{TradeError, TradeId, UserRouting};

/// The routing of one open engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Routing {
    pub logical_shards: u32,
    pub physical_shards: u32,
    pub executors: usize,
}

impl Routing {
    /// The logical shard of a user.
    pub fn logical_of_user(&self, user_id: u64) -> u32 {
        self.users().logical_of_user(user_id)
    }

    /// The shard counts, as a shard routes a user.
    pub fn users(&self) -> UserRouting {
        UserRouting { logical_shards: self.logical_shards, physical_shards: self.physical_shards }
    }

    /// The home shard of a merchant order number, by its order key (`order_key`, an xxh3-128
    /// hash of merchant and order number): where the key is claimed.
    pub fn physical_of_order_key(&self, key: u128) -> u32 {
        self.users().physical_of_order_key(key)
    }

    /// The home shard of merchant `merchant_id`'s order number `order_no`.
    pub fn physical_of_order(&self, merchant_id: u64, order_no: &str) -> u32 {
        self.physical_of_order_key(tradeshard_shard::order_key(merchant_id, order_no))
    }

    /// The physical shard holding a user's trades and accounts.
    pub fn physical_of_user(&self, user_id: u64) -> u32 {
        self.users().physical_of_user(user_id)
    }

    /// The physical shard holding a logical shard.
    pub fn physical_of_logical(&self, logical: u32) -> u32 {
        self.users().physical_of_logical(logical)
    }

    /// The executor owning a physical shard.
    pub fn executor_of_physical(&self, physical: u32) -> usize {
        physical as usize % self.executors
    }

    /// The physical shard of a trade id, after checking the id.
    pub fn physical_of_trade(&self, id: TradeId) -> Result<u32, TradeError> {
        let id = id.validate(self.logical_shards)?;
        Ok(self.physical_of_logical(id.logical_shard()))
    }

    /// The physical shards an executor owns.
    pub fn shards_of_executor(&self, executor: usize) -> impl Iterator<Item = u32> + '_ {
        (0..self.physical_shards).filter(move |&shard| self.executor_of_physical(shard) == executor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shard_has_one_executor_and_users_spread() {
        let routing = Routing { logical_shards: 1024, physical_shards: 4, executors: 3 };
        let mut owned: Vec<u32> = (0..3).flat_map(|e| routing.shards_of_executor(e)).collect();
        owned.sort_unstable();
        assert_eq!(owned, vec![0, 1, 2, 3]);
        let mut per_shard = [0u32; 4];
        for user in 1..=10_000u64 {
            per_shard[routing.physical_of_user(user) as usize] += 1;
        }
        assert!(per_shard.iter().all(|&n| n > 2000), "users spread over shards: {per_shard:?}");
    }

    #[test]
    fn trade_ids_route_like_their_users_and_bad_ones_are_refused() {
        let routing = Routing { logical_shards: 1024, physical_shards: 4, executors: 2 };
        let logical = routing.logical_of_user(42);
        let id = TradeId::new(logical, 1);
        assert_eq!(routing.physical_of_trade(id).unwrap(), routing.physical_of_logical(logical));
        assert!(routing.physical_of_trade(TradeId::new(1024, 1)).is_err());
        assert!(routing.physical_of_trade(TradeId(0)).is_err());
    }
}
