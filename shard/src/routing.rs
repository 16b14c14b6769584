//! Which physical shard holds a user's trades and accounts: the one formula the engine routes
//! requests by, and the one a shard uses to name the shard of a merchant it credits when a
//! trade paid from a balance settles, and where a merchant order number is claimed.
//!
//! `xxh3_64(user id) % logical_shards` picks the logical shard, fixed forever for the user;
//! logical shards map onto physical shards by `logical % physical`.

/// The shard counts of a data directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserRouting {
    pub logical_shards: u32,
    pub physical_shards: u32,
}

impl UserRouting {
    /// The logical shard of a user.
    pub fn logical_of_user(&self, user_id: u64) -> u32 {
        (xxhash_rust::xxh3::xxh3_64(&user_id.to_le_bytes()) % u64::from(self.logical_shards)) as u32
    }

    /// The physical shard holding a logical shard.
    pub fn physical_of_logical(&self, logical: u32) -> u32 {
        logical % self.physical_shards
    }

    /// The home shard of a merchant order number, by its order key (`order_key`): where the
    /// number is claimed for a buyer of another shard.
    pub fn physical_of_order_key(&self, key: u128) -> u32 {
        self.physical_of_logical((key as u64 % u64::from(self.logical_shards)) as u32)
    }

    /// The physical shard holding a user's trades and accounts.
    pub fn physical_of_user(&self, user_id: u64) -> u32 {
        self.physical_of_logical(self.logical_of_user(user_id))
    }
}
